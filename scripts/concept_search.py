"""Search variants of shipped concepts that the base toy model cannot draw from their captions.

    python scripts/concept_search.py orange_star_figure8,red_star_bounce [--variants 10] [--seeds 3]

Each variant keeps the concept's name: its colour, shape and motion family (so its held-out pairs); the sprite
pattern, background, direction and in-place dynamics are re-drawn. A variant is kept when the base model gets
the sprite colour and the motion family right on at most one seed in `--seeds` (BENCHMARKS.md, "Demo").
"""

from __future__ import annotations

import argparse

import numpy as np

from setseq.data import synthetic as S
from setseq.data.video import from_tensor
from setseq.eval import toy_metrics as M
from setseq.eval.toy_detect import detect_sprite
from setseq.infer.generate import GenerateOptions, Personalized
from setseq.runtime import quiet_libraries


def variants(name: str, rng: np.random.Generator, n: int) -> list[S.ConceptSpec]:
    a, m = S.CONCEPTS[name].appearance, S.CONCEPTS[name].motion
    out: list[S.ConceptSpec] = []
    seen: set[str] = set()
    for _ in range(60):
        dirs = S.FAMILY_DIRECTIONS.get(m.family)
        c = S._spec(
            a.shape, a.colour, str(rng.choice(S.PATTERNS)), str(rng.choice(list(S.BG_COLOURS))),
            str(rng.choice(S.BG_PATTERNS)), m.family, str(rng.choice(dirs)) if dirs else None,
            str(rng.choice(S.DYNAMICS)), size=a.size,
        )  # fmt: skip
        if S.is_compatible(c.appearance) and S.is_held_out(c) and S.caption(c) not in seen:
            seen.add(S.caption(c))
            out.append(c)
    return out[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("concepts", help="comma-separated shipped concept names")
    p.add_argument("--variants", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--model", default="toy")
    args = p.parse_args()
    quiet_libraries()
    base = Personalized.load(None, model=args.model, backbone="toy", log=lambda s: None)
    rng = np.random.default_rng(0)
    for name in args.concepts.split(","):
        for c in variants(name, rng, args.variants):
            ref = S.render(c, frames=9, size=32, seed=0)
            colour = family = 0
            for seed in range(args.seeds):
                video = from_tensor(base.generate(S.caption(c), GenerateOptions(seed=seed)))
                colour += detect_sprite(video)["colour"] == c.appearance.colour
                family += bool(M.sprite_motion_fidelity(video, ref)["family_match"])
            keep = "KEEP" if colour <= 1 and family <= 1 else "    "
            print(
                f"{keep} {name:24s} colour {colour}/{args.seeds} family {family}/{args.seeds}  {S.caption(c)}"
            )


if __name__ == "__main__":
    main()
