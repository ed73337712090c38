"""Stage 2, LoRA Sequence Encoding: freeze everything of stage 1 and learn the motion residual on the
ordered clip, with the T_motion prompt (T_static + "in [u] motion" + action and camera words).

Only the residual (zero-initialised, so training starts exactly at the stage-1 model) is trainable;
DropConnect p = stage2.dropconnect (0.5) masks it. The identity tensors stay bit-identical.
"""

from __future__ import annotations

import torch

from setseq import lora as L
from setseq.train import checkpoint as C
from setseq.train.loop import Batch, StageContext, run_stage


def train_stage2(ctx: StageContext, resume: C.Checkpoint | None = None) -> list[float]:
    sc = ctx.cfg.stage2
    clip = ctx.data.clip_latents  # (1, C, f, h, w)
    micro = sc.micro_batch or sc.batch_size

    def make_batch(step: int, k: int, gen: torch.Generator) -> Batch:
        # One video: the batch is the same clip under independent noise, timesteps and token masks.
        return Batch(clip.expand(micro, -1, -1, -1, -1), ctx.data.motion.expand(micro))

    params = L.set_stage(ctx.backbone.transformer, 2, sc.dropconnect)
    return run_stage(ctx, 2, sc, params, make_batch, resume)
