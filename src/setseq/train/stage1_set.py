"""Stage 1, LoRA Set Encoding: learn the identity basis and coefficients on the *unordered set of frames*.

Each sample is one frame encoded as a 1-frame video, drawn shuffled (without replacement within an epoch)
from every frame of the clip, with the T_static prompt. DropConnect p = stage1.dropconnect (0.8) masks the
identity coefficients; token masking drops prompt tokens. With prior preservation on, each micro-batch is
followed by as many frames of the base model's class videos (`setseq.train.prior`).

The one-stage baselines of `setseq.train.methods` run here too: DreamBooth-LoRA and LoRA-1 on the clip with
T_motion, DreamMix alternating frames (even steps) and the clip (odd steps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from setseq import lora as L
from setseq.config import ON_CLIP
from setseq.train import checkpoint as C
from setseq.train.loop import Batch, Sample

if TYPE_CHECKING:  # (the recipe runs this stage: a type, not an import at run time)
    from setseq.train.recipe import Recipe


def frame_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled frame order of one epoch (a permutation of range(n)), reproducible from (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def train_stage1(recipe: Recipe, resume: C.Checkpoint | None = None) -> list[float]:
    cfg, sc = recipe.cfg, recipe.cfg.stage1
    concepts = recipe.concepts or [recipe.data]  # several in a multi-concept run, sampled in turn
    n_c, n = len(concepts), concepts[0].set_latents.shape[0]  # frames per concept, (N, C, 1, h, w) each
    micro = sc.micro_batch or sc.batch_size

    def make_batch(step: int, k: int, gen: torch.Generator) -> Batch:
        on_clip = cfg.method in ON_CLIP or (cfg.method == "dreammix" and step % 2 == 1)
        # Global sample positions of this micro-batch: concept = position mod the number of concepts, and
        # each concept's own positions are mapped through each epoch's permutation of its frames.
        pos = [step * sc.batch_size + k * micro + i for i in range(micro)]
        which, own = [p % n_c for p in pos], [p // n_c for p in pos]
        texts = [recipe.texts[c][1 if on_clip else 0] for c in which] if recipe.texts else None
        if on_clip:  # one-stage baselines train on the video itself, without the subject-mask options
            samples: list[Sample] = [(concepts[c], None) for c in which]
        else:  # single frames (an image-to-video DiT sees them with the first-frame condition dropped)
            order = [int(frame_order(cfg.train.seed, q // n, n)[q % n]) for q in own]
            samples = [(concepts[c], i) for c, i in zip(which, order)]
        return recipe.batch(sc, samples, texts, gen, subject_aware=not on_clip)

    # textual inversion trains no LoRA at all, only the token embeddings (recipe.embeddings)
    trains = 0 if cfg.method == "textual_inversion" else 1
    params = L.set_stage(recipe.backbone.transformer, trains, sc.dropconnect)
    return recipe.run_stage(1, params, make_batch, resume)
