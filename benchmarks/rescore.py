"""Sampling options on trained runs (issue #29, "Inference: identity and motion scales, guidance"): score the
runs a `setseq bench` folder holds again (every run keeps its LoRA), with another identity scale or guidance, into a new
folder that `benchmarks/edit_table.py` reads like a bench folder. Nothing is trained: the runs' LoRAs are
sampled as the bench samples them (`setseq.tools.bench_score.score_run`), with the options given.

    python benchmarks/rescore.py /work/b29/f_recipe_s0 /work/b29/r_id125 --identity-scale 1.25
    python benchmarks/edit_table.py benchmarks/edits_toy_default.json "setseq id1.25=/work/b29/r_id125" \\
        --ceiling-cache src/setseq/assets/toy/base_ceiling.json --seed 0

A run whose row the new folder already holds is skipped, so a stopped rescore goes on where it stopped. The
concepts are read from the shipped suite, as `setseq bench` reads them without `--suite`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from setseq.io import write_json
from setseq.runtime import quiet_libraries
from setseq.tools.bench import ROW_FILE
from setseq.tools.bench_score import load_suite, score_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench", type=Path, help="a `setseq bench` folder")
    p.add_argument("out", type=Path, help="the new folder (runs/METHOD/RUN/row.json and the videos)")
    p.add_argument("--identity-scale", type=float, default=1.0, help="(default: 1.0, the bench's)")
    p.add_argument("--guidance", type=float, default=None, help="(default: the run's, as the bench)")
    p.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    rows = sorted(args.bench.glob(f"runs/*/*/{ROW_FILE}"))
    if not rows:
        raise SystemExit(
            f"error: {args.bench} holds no scored runs (runs/*/*/{ROW_FILE}); pass a bench --out folder"
        )
    for row_file in rows:
        saved = json.loads(row_file.read_text())
        here = args.out / row_file.parent.relative_to(args.bench)
        run_dir = row_file.parent / "run"
        if (here / ROW_FILE).is_file():
            continue
        if not (run_dir / "lora_diffusers.safetensors").is_file():
            raise SystemExit(f"error: {run_dir} holds no trained LoRA; bench it again")
        old = saved["row"]
        concept = load_suite(None, [old["concept"]])[0]
        t = time.perf_counter()
        here.mkdir(parents=True, exist_ok=True)
        scores = score_run(run_dir, concept, saved.get("gen_steps"), here, args.identity_scale, args.guidance)
        row = {k: old[k] for k in ("method", "concept", "seed")} | scores
        row["seconds"] = round(time.perf_counter() - t, 1)
        options = {"identity_scale": args.identity_scale, "guidance_scale": args.guidance}
        write_json(here / ROW_FILE, {**saved, "row": row, "rescored": options})
        print(
            f"{old['concept']} seed {old['seed']}: kept {row['kept']:.3f} (was {old['kept']:.3f}), success "
            f"{row['success']:.3f} (was {old['success']:.3f}), motion {row['motion']:.3f} (was {old['motion']:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
