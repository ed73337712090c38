"""Stage 1, LoRA Set Encoding: learn the identity basis and coefficients on the *unordered set of frames*.

Each sample is one frame encoded as a 1-frame video, drawn shuffled (without replacement within an epoch)
from every frame of the clip, with the T_static prompt. DropConnect p = stage1.dropconnect (0.8) masks the
identity coefficients; token masking drops prompt tokens.
"""

from __future__ import annotations

import torch

from setseq import lora as L
from setseq.train import checkpoint as C
from setseq.train.loop import Batch, StageContext, run_stage


def frame_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled frame order of one epoch (a permutation of range(n)), reproducible from (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def train_stage1(ctx: StageContext, resume: C.Checkpoint | None = None) -> list[float]:
    sc = ctx.cfg.stage1
    frames = ctx.data.set_latents  # (N, C, 1, h, w)
    n = frames.shape[0]
    micro = sc.micro_batch or sc.batch_size
    seed = ctx.cfg.train.seed

    def make_batch(step: int, k: int, gen: torch.Generator) -> Batch:
        # Global sample positions of this micro-batch, mapped through each epoch's permutation.
        pos = [step * sc.batch_size + k * micro + i for i in range(micro)]
        idx = [int(frame_order(seed, p // n, n)[p % n]) for p in pos]
        return Batch(frames[idx], ctx.data.static.expand(micro))

    params = L.set_stage(ctx.backbone.transformer, 1, sc.dropconnect)
    return run_stage(ctx, 1, sc, params, make_batch, resume)
