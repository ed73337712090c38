"""`setseq train` as a function: `train(cfg, out)` is `Recipe(cfg, out).setup().train()` (a new run), and with
`resume` `Recipe.from_run(out, cfg)`; the recipe object is `setseq.train.recipe`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from setseq.config import RunConfig
from setseq.train.recipe import Recipe


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    init_lora: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Personalize the model to the video: stage 1 then stage 2. Returns the run folder. With `resume`, `cfg`
    is the run's own config as `setup.resumed_config` gives it (`Recipe.from_run(out)` reads it itself)."""
    if resume:
        return Recipe.from_run(out, cfg, progress=progress, log=log).setup().train()
    return Recipe(cfg, out, init_lora=init_lora, progress=progress, log=log).setup().train()
