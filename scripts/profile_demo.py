"""Where `setseq demo` spends its time: this process's CPU seconds in each phase, on one thread.

    python scripts/profile_demo.py /tmp/demo_profile --stage1-steps 60 --stage2-steps 90 [key=value ...]

CPU time, not wall time, so that a machine shared with other work gives the same figures; one thread, so they
add up. The stages' steps can be cut (the demo recipe's 600 + 900 otherwise) and the training-step rows then
scaled by hand; every other phase runs as in the demo. The phases are timed by wrapping the functions the demo
calls (the training steps, checkpoints and logs of `setseq.train.recipe.Recipe`, the model load, generation, scoring,
the contact sheet and the mp4 writes); "train (all)" includes the first four.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

SPENT: dict[str, float] = {}


def timed(owner: object, name: str, label: str) -> None:
    """Replace `owner.name` by a wrapper adding its CPU seconds to SPENT[label]."""
    fn: Callable = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] = SPENT.get(label, 0.0) + time.process_time() - t

    setattr(owner, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the demo's output folder (replaced, as `setseq demo --out`)")
    p.add_argument("--stage1-steps", type=int, default=None, help="default: the demo recipe's")
    p.add_argument("--stage2-steps", type=int, default=None, help="default: the demo recipe's")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. regularizers.self_conditioning=0")
    args = p.parse_intermixed_args()
    torch.set_num_threads(1)
    start = time.process_time()  # (the imports below are here: their time is one of the figures)
    import setseq.config_load as config_load
    import setseq.data.video as video
    import setseq.infer.generate as generate
    import setseq.tools.demo as demo
    import setseq.train.recipe as recipe
    from setseq.train.recipe import Recipe

    SPENT["import setseq.tools.demo"] = time.process_time() - start
    steps = [f"stage{i}.steps={n}" for i, n in ((1, args.stage1_steps), (2, args.stage2_steps)) if n]
    steps += args.overrides
    resolve = config_load.resolve_config  # (the demo holds its own name for it, and for `train`)
    demo.resolve_config = lambda path, data, overrides: resolve(path, data, [*overrides, *steps])
    for owner, name, label in (
        (demo, "train", "train (all)"),
        (recipe, "load_model", "train: load the model (and its imports)"),
        (Recipe, "_accumulate", "train: forward + backward"),
        (Recipe, "_checkpoint", "train: checkpoints"),
        (Recipe, "_log_step", "train: step logs"),
        (generate.Personalized, "load", "load the models for generation"),
        (generate.Personalized, "generate", "generate the videos"),
        (demo, "_score_shot", "score the shots"),
        (demo, "_label_sheet", "contact sheet"),
        (video, "write_video", "write the mp4s"),
    ):
        timed(owner, name, label)
    demo.run_demo(args.out, log=lambda s: None)
    SPENT["process total"] = time.process_time() - start
    for label, seconds in SPENT.items():
        print(f"{label:42s} {seconds:8.2f} s")


if __name__ == "__main__":
    main()
