"""Stage 2, LoRA Sequence Encoding: freeze everything of stage 1 and learn the motion residual on the
ordered clip, with the T_motion prompt (T_static + "in [u] motion" + action and camera words).

Only the residual (zero-initialised, so training starts exactly at the stage-1 model) is trainable;
DropConnect p = stage2.dropconnect (0.5) masks it. The identity tensors stay bit-identical. In a
multi-concept run every concept's clip is used in turn (one motion residual for all), and with probability
`multi.stitch_rate` a step trains on two concepts' clips stitched side by side instead.
"""

from __future__ import annotations

import torch

from setseq import lora as L
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


def train_stage2(ctx: StageContext, resume: C.Checkpoint | None = None) -> list[float]:
    sc = ctx.cfg.stage2
    concepts = ctx.concepts or [ctx.data]  # several in a multi-concept run, sampled in turn
    micro = sc.micro_batch or sc.batch_size

    def make_batch(step: int, k: int, gen: torch.Generator) -> Batch:
        if ctx.stitched and float(torch.rand((), generator=gen)) < ctx.cfg.multi.stitch_rate:
            return stitched_batch(ctx.stitched, micro, gen, clip=True)
        # One video per concept: the batch is the clip(s) under independent noise, timesteps and token masks.
        idx = [(step * sc.batch_size + k * micro + i) % len(concepts) for i in range(micro)]
        which = [concepts[c] for c in idx]
        texts = [ctx.texts[c][1] for c in idx] if ctx.texts else None
        lat = [c.clip_latents for c in which]
        prompts = [c.motion for c in which]
        if sc.background_swap > 0:  # some samples show the subject's clip on another plain background
            for j, c in enumerate(which):
                k = swap_draw(c, sc.background_swap, gen)
                if k is not None:
                    lat[j], prompts[j] = c.swap_clip[k], c.swap_motion[k]
                    if texts is not None:
                        texts[j] = swap_prompt(texts[j], c.swap_names[k])
        ew, subj = None, None
        if sc.background_weight < 1.0 or sc.background_target == "base":
            subj = torch.cat([c.subject_clip for c in which])
        if sc.background_weight < 1.0:
            ew = background_weighted(subj, sc.background_weight)
        base = subj if sc.background_target == "base" else None  # off the subject: the base model's target
        if base is not None and sc.background_band >= 0:  # ... only beyond a band around the subject's path
            base = fm.subject_band(base, sc.background_band)
        batch = Batch(
            stack_latents(lat), stack_prompts(prompts), texts=texts, element_weights=ew, subject=base
        )
        if which[0].clip_image is not None:  # an image-to-video DiT: each clip conditioned on its first frame
            batch.image = stack_images([c.clip_image for c in which])  # type: ignore[misc]
        if ctx.prior is not None:  # prior preservation: as many base-model class videos
            lat, prompt = ctx.prior.clips(micro, gen)
            batch = with_prior(batch, lat, prompt, ctx.cfg.regularizers.prior_weight)
        return batch

    params = L.set_stage(ctx.backbone.transformer, 2, sc.dropconnect)
    return run_stage(ctx, 2, sc, params, make_batch, resume)
