"""What the base toy model draws from each shipped concept's own caption, scored against the concept's video.

    python scripts/base_check.py [--seeds 3] [--model toy]

A concept is only worth personalizing to if the base model cannot make it from text: this prints, per
concept, the appearance fidelity, the motion similarity and how many seeds get the motion family right
(BENCHMARKS.md, "Demo").
"""

from __future__ import annotations

import argparse
import json

from setseq.data.video import from_tensor, load_clip
from setseq.eval import toy_metrics as M
from setseq.infer.generate import GenerateOptions, Personalized
from setseq.runtime import quiet_libraries
from setseq.tools.demo import CONCEPT_DIR


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--model", default="toy")
    args = p.parse_args()
    quiet_libraries()
    index = json.loads((CONCEPT_DIR / "concepts.json").read_text())
    base = Personalized.load(None, model=args.model, backbone="toy", log=lambda s: None)
    print(f"{'concept':26s} {'appearance':>10s} {'motion sim':>10s} {'family':>8s}  families drawn")
    for name, c in index.items():
        ref = load_clip(CONCEPT_DIR / c["file"], frames=c["frames"]).frames
        app, sim, hits, fams = 0.0, 0.0, 0, []
        for seed in range(args.seeds):
            video = from_tensor(base.generate(c["caption"], GenerateOptions(seed=seed)))
            m = M.sprite_motion_fidelity(video, ref)
            app += M.appearance_fidelity(video, ref) / args.seeds
            sim += m["similarity"] / args.seeds
            hits += bool(m["family_match"])
            fams.append(m["family"])
        print(f"{name:26s} {app:10.2f} {sim:10.2f} {hits:>6d}/{args.seeds}  {', '.join(fams)}", flush=True)


if __name__ == "__main__":
    main()
