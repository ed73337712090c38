"""What the base toy model draws when each edit of the bench's suite is asked in words alone: a thin CLI over
`setseq.tools.ceiling` (the bench's and the demo's ceiling column, issue #29).

For every concept and sampling seed, the base model (no LoRA) is prompted with the full caption of what each
edited video should show ("a pink cross zigzagging right on a green background") and scored as the bench scores
an edit (`kept` counting the shape where the base model draws it from the concept's own caption; the bench
judges each run's ceiling by the run's own rule instead, and the last column leaves the shape out). The
ceilings go into the JSON cache that `setseq bench --ceiling-cache` and `setseq demo
--ceiling-cache` read (computed once; a ceiling already there is not computed again). Printed: per concept, and
over all of them in the groups the recipe's runs see (seen: a colour the recipe composites onto; unseen; motion).

    python benchmarks/base_ceiling.py [--seeds 2] [--concepts a,b] [--model toy] \\
        [--cache src/setseq/assets/toy/base_ceiling.json] [--steps N]

Each concept's line is printed as soon as it is done (9 generations a seed; minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from setseq.data.synthetic import CONCEPTS
from setseq.data.video import load_clip
from setseq.eval.edits import EDIT_GROUPS, EDIT_KINDS, edit_suite, group_edits
from setseq.infer.generate import Personalized
from setseq.tools.bench import _run_config
from setseq.tools.bench_score import load_suite
from setseq.tools.ceiling import CeilingCache, composited_colours

FIGURES = ("followed", "kept", "colour_kept", "success", "colour_success")


def line(label: str, rs: list[dict]) -> str:
    rs = [{**r, "colour_success": r["followed"] and r["colour_kept"]} for r in rs]
    if not rs:
        return f"| {label} | 0 |" + " - |" * len(FIGURES)
    return (
        f"| {label} | {len(rs)} | "
        + " | ".join(f"{100 * np.mean([r[k] for r in rs]):.0f}" for k in FIGURES)
        + " |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--seeds", type=int, default=2, help="sampling seeds per edit (0..N-1: the bench's run seeds)"
    )
    ap.add_argument("--model", default="toy")
    ap.add_argument("--concepts", default=None, help="comma-separated concept names (default: the suite)")
    ap.add_argument(
        "--cache", default=None, help="the ceiling cache (default ~/.cache/setseq/base_ceiling.json)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the model's; the bench's)"
    )
    args = ap.parse_args()

    cache = CeilingCache(args.cache)
    base: list[Personalized] = []

    def pipeline() -> Personalized:
        if not base:
            base.append(Personalized.load(None, args.model, log=lambda s: None))
        return base[0]

    rows: list[dict] = []
    print(
        "| edits | n | followed % | kept % | colour kept % | success % | followed and colour kept % |\n"
        "|---|---|---|---|---|---|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as masks:
        # Seed-major: a stopped run holds every concept at the first seeds.
        for seed in range(args.seeds):
            for concept in load_suite(names=args.concepts.split(",") if args.concepts else None):
                spec = CONCEPTS[concept.name]
                reference = load_clip(concept.video, frames=9).frames
                entry = cache.ceiling(
                    concept.name, concept.shape, reference, model=args.model, seed=seed, steps=args.steps,
                    pipeline=pipeline, log=lambda s: None,
                )  # fmt: skip
                # The groups a run of the recipe (setseq, the bench's composites) puts these edits in.
                cfg = _run_config("setseq", concept, seed, args.model, [], Path(masks) / concept.name)
                groups = group_edits(edit_suite("sks", "zwx", concept.shape, spec), composited_colours(cfg))
                mine = [
                    {"concept": concept.name, "seed": seed, "edit": n, "group": groups[n], **s}
                    for n, s in entry["edits"].items()
                ]
                rows += mine
                print(line(f"{concept.name} seed {seed}", mine), flush=True)
    print(line("all", rows))
    for kind in EDIT_KINDS:
        print(line(f"kind {kind}", [r for r in rows if r["kind"] == kind]))
    for g in EDIT_GROUPS:
        print(line(f"group {g} (the recipe's palette)", [r for r in rows if r["group"] == g]))
    print("\nper concept and group, over its seeds (the recipe's palette):")
    print("| edits | n | followed % | kept % | colour kept % | success % | followed and colour kept % |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["concept"] for r in rows):
        for g in EDIT_GROUPS:
            mine = [r for r in rows if r["concept"] == name and r["group"] == g]
            if mine:
                print(line(f"{name} {g}", mine))
    print(f"\nceilings cached in {cache.path}")


if __name__ == "__main__":
    main()
