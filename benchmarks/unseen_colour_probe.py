"""Which colour the sprite is drawn in on backgrounds training never showed (issue #29's diagnosis).

    python benchmarks/unseen_colour_probe.py base "sks diamond,cyan diamond,diamond"   # the base model, no LoRA
    python benchmarks/unseen_colour_probe.py RUN_DIR [N [SEEDS]]  # a trained run: wording, scales, guidance

`base`: each subject phrase as "a {phrase} on a {colour} background" over six plain backgrounds, 2 seeds.
A run folder: its concept prompt (and variants: identity scale, motion scale, no motion words, the colour word
added, guidance 8; the first N of them) on green, yellow and white (cyan's unseen edits), SEEDS sampling seeds
(default 2). Prints the detected sprite colours (`setseq.eval.toy_detect.detect_sprite`), in all and per
background.
"""

from __future__ import annotations

import sys
from collections import Counter

from setseq.data.video import from_tensor
from setseq.eval.toy_detect import detect_sprite
from setseq.infer.generate import GenerateOptions, Personalized

CASES = [  # (prompt, identity scale, motion scale, guidance)
    ("a sks diamond in zwx motion on a {bg} background", 1.0, 1.0, None),
    ("a sks diamond in zwx motion on a {bg} background", 1.0, 0.0, None),
    ("a sks diamond in zwx motion on a {bg} background", 1.5, 1.0, None),
    ("a sks diamond in zwx motion on a {bg} background", 0.5, 1.0, None),
    ("a sks diamond on a {bg} background", 1.0, 1.0, None),
    ("a sks cyan diamond in zwx motion on a {bg} background", 1.0, 1.0, None),
    ("a sks diamond in zwx motion on a {bg} background", 1.0, 1.0, 8.0),
]


def colours(
    pm: Personalized, prompt: str, backgrounds: tuple[str, ...], opts: dict, seeds: int = 2
) -> tuple[Counter, dict[str, list]]:
    """The sprite colours over every background and seed, and per background (in seed order)."""
    got: Counter = Counter()
    per: dict[str, list] = {}
    for bg in backgrounds:
        for seed in range(seeds):
            video = from_tensor(pm.generate(prompt.format(bg=bg), GenerateOptions(seed=seed, **opts)))
            per.setdefault(bg, []).append(detect_sprite(video)["colour"])
            got[per[bg][-1]] += 1
    return got, per


def main() -> None:
    if sys.argv[1] == "base":
        pm = Personalized.load(None, "toy", log=lambda s: None)
        for subject in sys.argv[2].split(","):
            for bg in ("green", "yellow", "white", "gray", "blue", "black"):
                got, _ = colours(pm, f"a {subject} on a {{bg}} background", (bg,), {})
                print(f"{subject!r:28} on {bg:7}: {dict(got)}", flush=True)
        return
    pm = Personalized.load(sys.argv[1], log=lambda s: None)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else None
    seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    for text, ids, ms, g in CASES[:n]:
        opts = {"identity_scale": ids, "motion_scale": ms, "guidance_scale": g}
        got, per = colours(pm, text, ("green", "yellow", "white"), opts, seeds)
        total = sum(got.values())
        print(
            f"{text:55} id {ids} motion {ms} cfg {g}: cyan {got['cyan']}/{total} {dict(got)} {per}",
            flush=True,
        )


if __name__ == "__main__":
    main()
