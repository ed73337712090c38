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

from setseq.config_load import resolve_config
from setseq.data.video import from_tensor, load_clip
from setseq.eval import toy_metrics as M
from setseq.eval.metrics import mse
from setseq.export import load_setseq
from setseq.infer.compose import load_composition
from setseq.infer.generate import GenerateOptions, Personalized
from setseq.tools.bench_score import Concept, load_suite
from setseq.tools.demo import DEMO_CONFIG, with_concept_mask
from setseq.train.run import train

# Every run: no TensorBoard, no resume points before a stage's end, one checkpoint kept.
QUIET = ["train.tensorboard=false", "train.checkpoint_every=100000", "train.keep_checkpoints=1"]
TOKENS = [("sks", "zwx"), ("qrv", "vkt")]  # (token, motion token) of the first and second concept
MODES = ("alone", "weighted_sum", "joint")


def silent(_: str) -> None:
    """A log that drops the runs' lines (the rows are what this script prints)."""


def train_separately(
    pair: tuple[Concept, Concept], folder: Path, model: str, overrides: list[str]
) -> list[Path]:
    """One run per concept, each with its own tokens and the recipe's background swaps (its subject mask)."""
    runs = []
    for c, (tok, mtok) in zip(pair, TOKENS):
        concept = [f"concept.class_word={c.shape}", f"concept.token={tok}", f"concept.motion_token={mtok}"]
        cfg = resolve_config(
            DEMO_CONFIG,
            {"data": {"video": str(c.video)}},
            [*concept, f"model.path={model}", *QUIET, *overrides],
        )
        cfg = with_concept_mask(cfg, c.name, folder / "masks" / c.name)
        runs.append(train(cfg, folder / c.name, progress=False, log=silent))
    return runs


def train_jointly(pair: tuple[Concept, Concept], folder: Path, model: str, overrides: list[str]) -> Path:
    """One run of both concepts (`multi.concepts`); a joint run takes no subject mask (one per video), so the
    recipe's background swaps are off there."""
    a, b = pair
    second = {
        "video": str(b.video),
        "token": TOKENS[1][0],
        "motion_token": TOKENS[1][1],
        "class_word": b.shape,
    }
    flags = {"data": {"video": str(a.video)}, "multi": {"concepts": [second]}}
    extra = [f"concept.class_word={a.shape}", f"model.path={model}", "stage1.background_swap=0"]
    cfg = resolve_config(DEMO_CONFIG, flags, [*extra, *QUIET, *overrides])
    joint = train(cfg, folder / "joint", progress=False, log=silent)
    assert load_setseq(joint / "setseq.safetensors").meta["tokens"] == ["sks", "zwx", "qrv", "vkt"]
    return joint


def score_pair(name: str, pair: tuple[Concept, Concept], runs: list[Path], joint: Path) -> list[dict]:
    """Each concept's fidelity to its video, generated alone, under the weighted sum, and by the joint run."""
    summed, _ = load_composition(runs, [1.0, 1.0], log=silent)
    joint_pm = Personalized.load(joint, log=silent)
    rows = []
    for c, run, (tok, mtok) in zip(pair, runs, TOKENS):
        ref = load_clip(c.video, frames=9).frames
        prompt = f"a {tok} {c.shape} in {mtok} motion"
        alone = Personalized.load(run, log=silent)
        for mode, pm in zip(MODES, (alone, summed, joint_pm)):
            video = from_tensor(pm.generate(prompt, GenerateOptions(seed=0)))
            rows.append(
                {
                    "pair": name,
                    "concept": c.name,
                    "mode": mode,
                    "appearance": M.appearance_fidelity(video, ref),
                    "motion": float(M.sprite_motion_fidelity(video, ref)["similarity"]),
                    "mse": mse(video, ref),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and std of each metric by mode, printed as a table."""
    summary = {}
    for mode in MODES:
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
        cells = [f"{cols[k]['mean']:8.3f} ± {cols[k]['std']:5.3f}" for k in ("appearance", "motion", "mse")]
        print(f"{mode:14s} " + " ".join(cells))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--pairs", default="red_star_bounce:yellow_square_circling,pink_cross_zigzag:orange_star_figure8"
    )
    p.add_argument("--model", default="toy")
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. stage1.steps=300")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for name in args.pairs.split(","):
        pair = tuple(load_suite(None, name.split(":")))
        runs = train_separately(pair, out / name, args.model, args.overrides)
        joint = train_jointly(pair, out / name, args.model, args.overrides)
        rows += score_pair(name, pair, runs, joint)
    summary = summarize(rows)
    result = {"rows": rows, "summary": summary, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "compose_cost.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
