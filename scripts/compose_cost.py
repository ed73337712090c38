"""What composing costs: each concept's fidelity alone, under a weighted sum of separate runs, and in a joint run.

    python scripts/compose_cost.py --out /tmp/compose_cost --pairs red_star_bounce:yellow_square_circling

For each pair (A, B) of shipped toy concepts: train A alone and B alone (tokens sks/zwx and qrv/vkt), and A and
B jointly (`multi.concepts`); then generate each concept's own prompt (T_motion) three ways: its own run, the
weighted sum of both runs (`setseq compose A B`, weights 1 and 1), and the joint run. The concept's appearance
and motion fidelity against its reference video (toy detectors) tell what the training-free sum costs. The
table goes to stdout and `OUT/compose_cost.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--pairs", default="red_star_bounce:yellow_square_circling,pink_cross_zigzag:orange_star_figure8"
    )
    p.add_argument("--model", default="toy")
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. stage1.steps=300")
    args = p.parse_args()

    from setseq.bench import load_suite
    from setseq.config import resolve_config
    from setseq.data.video import from_tensor, load_clip
    from setseq.demo import DEMO_CONFIG, with_concept_mask
    from setseq.eval import toy_metrics as M
    from setseq.eval.metrics import mse
    from setseq.export import load_setseq
    from setseq.infer.compose import load_composition
    from setseq.infer.generate import GenerateOptions, Personalized
    from setseq.train.run import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quiet = ["train.tensorboard=false", "train.checkpoint_every=100000", "train.keep_checkpoints=1"]
    tokens = [("sks", "zwx"), ("qrv", "vkt")]
    rows = []
    t0 = time.perf_counter()
    for pair in args.pairs.split(","):
        a, b = load_suite(None, pair.split(":"))
        runs = []
        for c, (tok, mtok) in zip((a, b), tokens):
            cfg = resolve_config(
                DEMO_CONFIG,
                {"data": {"video": str(c.video)}},
                [
                    f"concept.class_word={c.shape}",
                    f"concept.token={tok}",
                    f"concept.motion_token={mtok}",
                    f"model.path={args.model}",
                    *quiet,
                    *args.overrides,
                ],
            )
            cfg = with_concept_mask(
                cfg, c.name, out / pair / "masks" / c.name
            )  # the recipe's background swaps
            runs.append(train(cfg, out / pair / c.name, progress=False, log=lambda s: None))
        joint_flags = {
            "data": {"video": str(a.video)},
            "multi": {
                "concepts": [
                    {"video": str(b.video), "token": "qrv", "motion_token": "vkt", "class_word": b.shape}
                ]
            },
        }
        cfg = resolve_config(
            DEMO_CONFIG,
            joint_flags,
            # a joint run takes no subject mask (one per video): the recipe's background swaps are off there
            [
                f"concept.class_word={a.shape}",
                f"model.path={args.model}",
                "stage1.background_swap=0",
                *quiet,
                *args.overrides,
            ],
        )
        joint = train(cfg, out / pair / "joint", progress=False, log=lambda s: None)
        summed, _ = load_composition(runs, [1.0, 1.0], log=lambda s: None)
        joint_pm = Personalized.load(joint, log=lambda s: None)
        for c, run, (tok, mtok) in zip((a, b), runs, tokens):
            ref = load_clip(c.video, frames=9).frames
            prompt = f"a {tok} {c.shape} in {mtok} motion"
            alone = Personalized.load(run, log=lambda s: None)
            for mode, pm in (("alone", alone), ("weighted_sum", summed), ("joint", joint_pm)):
                video = from_tensor(pm.generate(prompt, GenerateOptions(seed=0)))
                rows.append(
                    {
                        "pair": pair,
                        "concept": c.name,
                        "mode": mode,
                        "appearance": M.appearance_fidelity(video, ref),
                        "motion": float(M.sprite_motion_fidelity(video, ref)["similarity"]),
                        "mse": mse(video, ref),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        assert load_setseq(joint / "setseq.safetensors").meta["tokens"] == ["sks", "zwx", "qrv", "vkt"]
    summary = {}
    for mode in ("alone", "weighted_sum", "joint"):
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {
            k: {
                "mean": float(np.nanmean([r[k] for r in mine])),
                "std": float(np.nanstd([r[k] for r in mine])),
            }
            for k in ("appearance", "motion", "mse")
        }
    print(f"{'mode':14s} {'appearance':>16s} {'motion':>16s} {'mse':>16s}")
    for mode, cols in summary.items():
        print(
            f"{mode:14s} "
            + " ".join(
                f"{cols[k]['mean']:8.3f} ± {cols[k]['std']:5.3f}" for k in ("appearance", "motion", "mse")
            )
        )
    (out / "compose_cost.json").write_text(
        json.dumps(
            {"rows": rows, "summary": summary, "seconds": round(time.perf_counter() - t0, 1)}, indent=2
        )
    )


if __name__ == "__main__":
    main()
