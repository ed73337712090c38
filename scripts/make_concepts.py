"""Render the shipped sample dynamic concepts (setseq.data.synthetic.CONCEPTS) to small mp4s.

    python scripts/make_concepts.py --out src/setseq/assets/concepts

Each concept is a held-out appearance x motion combination: the toy base model never saw it in training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from setseq.data.synthetic import CONCEPTS, caption, is_held_out, render
from setseq.data.video import write_video

FRAMES, SIZE, FPS = 9, 32, 8.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="src/setseq/assets/concepts")
    args = ap.parse_args()
    out = Path(args.out)
    index = {}
    for name, spec in CONCEPTS.items():
        assert is_held_out(spec), name
        write_video(out / f"{name}.mp4", render(spec, frames=FRAMES, size=SIZE, seed=0), fps=FPS)
        index[name] = {
            "file": f"{name}.mp4",
            "caption": caption(spec),
            "frames": FRAMES,
            "size": SIZE,
            "fps": FPS,
            "shape": spec.appearance.shape,
        }
    (out / "concepts.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {len(index)} concepts to {out}")


if __name__ == "__main__":
    main()
