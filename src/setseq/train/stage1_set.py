"""Stage 1, LoRA Set Encoding: learn the identity basis and coefficients on the *unordered set of frames*.

Each sample is one frame encoded as a 1-frame video, drawn shuffled (without replacement within an epoch)
from every frame of the clip, with the T_static prompt. DropConnect p = stage1.dropconnect (0.8) masks the
identity coefficients; token masking drops prompt tokens. With prior preservation on, each micro-batch is
followed by as many frames of the base model's class videos (`setseq.train.prior`).

The one-stage baselines of `setseq.train.methods` run here too: DreamBooth-LoRA and LoRA-1 on the clip with
T_motion, DreamMix alternating frames (even steps) and the clip (odd steps).
"""

from __future__ import annotations

import torch

from setseq import lora as L
from setseq.config import ON_CLIP
from setseq.data.masks import swap_prompt
from setseq.functional import flow_matching as fm
from setseq.prompts import stack_images, stack_prompts
from setseq.train import checkpoint as C
from setseq.train.loop import (
    Batch,
    StageContext,
    background_weighted,
    run_stage,
    stack_latents,
    stitched_batch,
    swap_draw,
    with_prior,
)


def frame_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled frame order of one epoch (a permutation of range(n)), reproducible from (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def train_stage1(ctx: StageContext, resume: C.Checkpoint | None = None) -> list[float]:
    sc = ctx.cfg.stage1
    concepts = ctx.concepts or [ctx.data]  # several in a multi-concept run, sampled in turn
    n_c = len(concepts)
    n = concepts[0].set_latents.shape[0]  # frames per concept, (N, C, 1, h, w) each
    micro = sc.micro_batch or sc.batch_size
    seed = ctx.cfg.train.seed
    method = ctx.cfg.method
    on_clip_always = method in ON_CLIP

    def make_batch(step: int, k: int, gen: torch.Generator) -> Batch:
        on_clip = on_clip_always or (method == "dreammix" and step % 2 == 1)
        if ctx.stitched and float(torch.rand((), generator=gen)) < ctx.cfg.multi.stitch_rate:
            return stitched_batch(ctx.stitched, micro, gen, clip=on_clip)
        # Global sample positions of this micro-batch: concept = position mod the number of concepts, and
        # each concept's own positions are mapped through each epoch's permutation of its frames.
        pos = [step * sc.batch_size + k * micro + i for i in range(micro)]
        which = [p % n_c for p in pos]
        own = [p // n_c for p in pos]
        texts = [ctx.texts[c][1 if on_clip else 0] for c in which] if ctx.texts else None
        if on_clip:  # one-stage baselines train on the video itself
            batch = Batch(
                stack_latents([concepts[c].clip_latents for c in which]),
                stack_prompts([concepts[c].motion for c in which]),
                texts=texts,
            )
            if concepts[0].clip_image is not None:  # an image-to-video DiT: the clip's own first frame
                batch.image = stack_images([concepts[c].clip_image for c in which])  # type: ignore[misc]
        else:  # single frames: an image-to-video DiT sees them with the first-frame condition dropped
            idx = [int(frame_order(seed, q // n, n)[q % n]) for q in own]
            lat = [concepts[c].set_latents[i : i + 1] for c, i in zip(which, idx)]
            prompts = [concepts[c].static for c in which]
            if sc.background_swap > 0:  # some frames show the subject on another plain background
                for j, (c, i) in enumerate(zip(which, idx)):
                    k = swap_draw(concepts[c], sc.background_swap, gen)
                    if k is not None:
                        lat[j], prompts[j] = concepts[c].swap_set[k, i : i + 1], concepts[c].swap_static[k]
                        if texts is not None:
                            texts[j] = swap_prompt(texts[j], concepts[c].swap_names[k])
            ew, subj = None, None
            if sc.background_weight < 1.0 or sc.background_target == "base":
                subj = torch.cat([concepts[c].subject_set[i : i + 1] for c, i in zip(which, idx)])
            if sc.background_weight < 1.0:
                ew = background_weighted(subj, sc.background_weight)
            base = (
                subj if sc.background_target == "base" else None
            )  # off the subject: the base model's target
            if base is not None and sc.background_band >= 0:  # ... only beyond a band around its path: the
                # union over every frame of the video (its set's frames, as one (1, 1, F, h, w) clip)
                base = torch.cat(
                    [
                        fm.subject_band(concepts[c].subject_set.transpose(0, 2), sc.background_band)[:, :, :1]
                        for c in which
                    ]
                )
            batch = Batch(
                torch.cat(lat), stack_prompts(prompts), texts=texts, element_weights=ew, subject=base
            )
        if ctx.prior is not None:  # prior preservation: as many base-model samples, with their class prompts
            lat, prompt = ctx.prior.clips(micro, gen) if on_clip else ctx.prior.frames(micro, gen)
            batch = with_prior(batch, lat, prompt, ctx.cfg.regularizers.prior_weight)
        return batch

    # textual inversion trains no LoRA at all, only the token embeddings (ctx.embeddings)
    params = L.set_stage(ctx.backbone.transformer, 0 if method == "textual_inversion" else 1, sc.dropconnect)
    return run_stage(ctx, 1, sc, params, make_batch, resume)
