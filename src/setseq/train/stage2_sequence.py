"""Stage 2, LoRA Sequence Encoding: freeze everything of stage 1 and learn the motion residual on the
ordered clip, with the T_motion prompt (T_static + "in [u] motion" + action and camera words).

Only the residual (zero-initialised, so training starts exactly at the stage-1 model) is trainable;
DropConnect p = stage2.dropconnect (0.5) masks it. The identity tensors stay bit-identical. In a
multi-concept run every concept's clip is used in turn (one motion residual for all), and with probability
`multi.stitch_rate` a step trains on two concepts' clips stitched side by side instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from setseq import lora as L
from setseq.train import checkpoint as C
from setseq.train.loop import Batch

if TYPE_CHECKING:  # (the recipe runs this stage: a type, not an import at run time)
    from setseq.train.recipe import Recipe


def train_stage2(recipe: Recipe, resume: C.Checkpoint | None = None) -> list[float]:
    sc = recipe.cfg.stage2
    concepts = recipe.concepts or [recipe.data]  # several in a multi-concept run, sampled in turn
    micro = sc.micro_batch or sc.batch_size

    def make_batch(step: int, k: int, gen: torch.Generator) -> Batch:
        # One video per concept: the batch is the clip(s) under independent noise, timesteps and token masks.
        idx = [(step * sc.batch_size + k * micro + i) % len(concepts) for i in range(micro)]
        texts = [recipe.texts[c][1] for c in idx] if recipe.texts else None
        return recipe.batch(sc, [(concepts[c], None) for c in idx], texts, gen)

    params = L.set_stage(recipe.backbone.transformer, 2, sc.dropconnect)
    return recipe.run_stage(2, params, make_batch, resume)
