"""The method and the paper's baselines, as training modes of the same tool (`method=` in the config).

Every mode trains the same LoRA layer (`setseq.lora`) with the same loop, data cache, checkpoints and
outputs; a mode only changes which stages run, on what data, and which regularizers are on. What a mode
changes is applied to the run's config when training starts (`effective_config`); `config.yaml` keeps what
the user asked for, so a resumed run resolves to the same thing.

| method | stages | data | trainable | regularizers |
|---|---|---|---|---|
| setseq | 1 then 2 | frames, then the clip | identity (basis + coefficients), then the motion residual | all configured |
| dreambooth | one | the clip, T_motion | identity (a plain LoRA) for stage1 + stage2 steps | prior only |
| lora1 | one | as dreambooth | as dreambooth, rank 1 | prior only |
| two_stage | 1 then 2 | as setseq | as setseq | none (no DropConnect, token masking, self-conditioning, prior) |
| dreammix | one | alternating steps: frames (T_static) and the clip (T_motion) | identity | prior only |
| textual_inversion | one | the clip, T_motion | the two tokens' embeddings only (lr = stage1.lr), no LoRA | prior only |
"""

from __future__ import annotations

import dataclasses

from setseq.config import MASK_OPTIONS_OFF, METHODS
from setseq.data.masks import check_swap_source
from setseq.errors import SetseqError


def effective_config(cfg):
    """The config the recipes run with for `cfg.method` (a new object; `cfg` is not changed)."""
    if cfg.method not in METHODS:
        raise SetseqError(f"unknown method {cfg.method!r}", f"use one of: {', '.join(METHODS)}")
    if cfg.method == "setseq":
        return cfg
    rep = dataclasses.replace
    # The subject-mask options (background weight and swap) are setseq's regularization: off for baselines.
    plain = MASK_OPTIONS_OFF
    if cfg.method == "two_stage":
        return rep(
            cfg,
            stage1=rep(cfg.stage1, dropconnect=0.0, **plain),
            stage2=rep(cfg.stage2, dropconnect=0.0, **plain),
            regularizers=rep(
                cfg.regularizers,
                token_mask=0.0,
                self_conditioning=0.0,
                prior_videos=0,
                prior_backgrounds=False,
            ),
        )
    # one-stage baselines: the whole step budget in stage 1, no stage 2
    out = rep(
        cfg,
        stage1=rep(cfg.stage1, steps=cfg.stage1.steps + cfg.stage2.steps, dropconnect=0.0, **plain),
        stage2=rep(cfg.stage2, steps=0, **plain),
        regularizers=rep(cfg.regularizers, token_mask=0.0, self_conditioning=0.0),
    )
    if cfg.method == "lora1":
        out = rep(out, lora=rep(cfg.lora, rank=1, alpha=1.0))
    if cfg.method == "textual_inversion":
        out = rep(out, concept=rep(cfg.concept, train_embedding=True, embedding_lr=cfg.stage1.lr))
    return out


def uses_mask(cfg) -> bool:
    """Whether a (effective) config's stages use the subject mask: any option of `MASK_OPTIONS_OFF` (a
    background weight below 1, swaps, the base model's target off the subject, the attention loss) on."""
    return any(
        getattr(sc, opt) != off for sc in (cfg.stage1, cfg.stage2) for opt, off in MASK_OPTIONS_OFF.items()
    )


def _fmt(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:g}"


def check_mask(cfg) -> None:
    """One-line refusals of a subject mask that is missing where a stage needs it, or given where nothing
    can use it (a baseline method, a multi-concept run, no stage asking for it)."""
    eff = effective_config(cfg)
    if not cfg.data.mask and (cfg.data.mask_erode or cfg.data.mask_feather):
        raise SetseqError(
            "data.mask_erode / data.mask_feather shape a subject mask, and none was given",
            "pass --mask MASK (or --mask auto), or leave data.mask_erode and data.mask_feather out",
        )
    if not cfg.data.mask:
        for n, sc in (("stage1", eff.stage1), ("stage2", eff.stage2)):
            for opt, off in MASK_OPTIONS_OFF.items():
                v = getattr(sc, opt)
                if v != off:
                    raise SetseqError(
                        f"{n}.{opt}={_fmt(v)} needs a subject mask of the video",
                        f"pass --mask MASK (a mask video or a folder of per-frame masks), or set {n}.{opt}={_fmt(off)}",
                    )
        return
    if cfg.multi.concepts:
        raise SetseqError(
            "a subject mask (data.mask) with a multi-concept run: there is one mask per video",
            "train the concepts jointly without --mask",
        )
    if not uses_mask(eff):
        if uses_mask(cfg):
            raise SetseqError(
                f"method {cfg.method} cannot use a subject mask (the background weight and swap are "
                "Set-and-Sequence's regularization)",
                "drop --mask for this baseline, or use --method setseq",
            )
        raise SetseqError(
            "a subject mask (data.mask) is given but no stage uses it",
            "set stage1.background_weight (e.g. 0.1) or stage1.background_swap (e.g. 0.5), or drop --mask",
        )
    if any(sc.background_swap > 0 for sc in (eff.stage1, eff.stage2)):
        check_swap_source(cfg.data)  # a background source that yields nothing
