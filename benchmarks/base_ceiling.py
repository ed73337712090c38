"""What the base toy model draws when each edit of the bench's suite is asked in words alone.

For every concept of the bench's suite and every edit of its edit suite (`setseq.eval.edits`), the base model
(no LoRA) is prompted with the full caption of what the edited video should show ("a pink cross zigzagging
right on a green background"), and the video is scored exactly as the bench scores an edit (followed, kept,
colour kept, success; the shape counted). This is the ceiling a personalization competes with: an edit the
base model cannot draw from a complete description is limited by the model, not by the method.

    python benchmarks/base_ceiling.py [--seeds 2] [--concepts a,b] [--model toy] [--out base_ceiling.json]

Each concept's line is printed as soon as it is done (16 generations at 2 seeds: minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from setseq.bench import load_suite
from setseq.data.synthetic import CONCEPTS, caption
from setseq.data.video import from_tensor, load_clip
from setseq.eval.edits import EDIT_KINDS, edit_suite, score_edit, target_spec
from setseq.infer.generate import GenerateOptions, Personalized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="sampling seeds per edit")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--concepts", default=None, help="comma-separated concept names (default: the suite)")
    ap.add_argument("--out", default=None, help="write every score to this JSON file")
    args = ap.parse_args()

    def line(label: str, rs: list[dict]) -> str:
        f = {k: np.mean([r[k] for r in rs]) for k in ("followed", "kept", "colour_kept", "success")}
        return f"| {label} | {len(rs)} | " + " | ".join(f"{100 * f[k]:.0f}" for k in f) + " |"

    pm = Personalized.load(None, args.model, log=lambda s: None)
    rows: list[dict] = []
    print(
        "| edits | n | followed % | kept % | colour kept % | success % |\n|---|---|---|---|---|---|",
        flush=True,
    )
    for concept in load_suite(names=args.concepts.split(",") if args.concepts else None):
        spec = CONCEPTS[concept.name]
        reference = load_clip(concept.video, frames=9).frames
        for e in edit_suite("sks", "zwx", concept.shape, spec):
            prompt = caption(target_spec(spec, e))
            for seed in range(args.seeds):
                video = from_tensor(pm.generate(prompt, GenerateOptions(seed=seed)))
                s = score_edit(video, e, reference, spec, shape_reproduced=True)
                rows.append(
                    {"concept": concept.name, "edit": e.name, "seed": seed, "base_prompt": prompt, **s}
                )
        print(line(concept.name, [r for r in rows if r["concept"] == concept.name]), flush=True)

    print(line("all", rows))
    for kind in EDIT_KINDS:
        print(line(kind, [r for r in rows if r["kind"] == kind]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
