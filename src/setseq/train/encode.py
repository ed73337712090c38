"""A run's inputs, encoded once: the video (and its subject mask) decoded, sampled and checked, then frame
latents, clip latents and prompt embeddings, cached on disk by a content key (`setseq.data.cache`).

Multi-concept runs encode every concept and the stitched pairs (two clips side by side, "A and B").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import Backbone
from setseq.config import MultiConfig, RunConfig
from setseq.data.cache import (
    EncodedConcept,
    cache_key,
    encode_latents,
    file_sha256,
    load_cache,
    run_key,
    save_cache,
    weights_stamp,
)
from setseq.data.degrade import degrade, edge, parse_degrade
from setseq.data.masks import (
    SWAP_COLOURS,
    composite_over,
    latent_weights,
    load_mask,
    mask_sha256,
    swap_backgrounds,
    swap_prompt,
)
from setseq.data.video import from_tensor, load_clip, to_tensor
from setseq.errors import SetseqError


def check_shapes(cfg: RunConfig, bb: Backbone) -> tuple[int, int, int]:
    """(frames, height, width) for this run, checked against what the backbone accepts."""
    info = bb.info
    frames = cfg.data.frames or info.frames
    h, w = cfg.data.size or (info.height, info.width)
    m = info.frame_multiple
    if (frames - 1) % m:
        lo = (frames - 1) // m * m + 1
        raise SetseqError(
            f"data.frames={frames} is not of the form {m}k+1 that the {info.name} backbone needs",
            f"use --frames {lo} or {lo + m}" if lo > m else f"use --frames {lo + m}",
        )
    if m > 1 and frames <= m:  # one latent frame: stage 2 would learn motion from a still
        raise SetseqError(
            f"data.frames={frames} gives stage 2 a single latent frame, with no motion to learn",
            f"use --frames {m + 1} or more (a video of at least {m + 1} frames)",
        )
    sm = info.spatial_multiple
    if h % sm or w % sm:
        raise SetseqError(
            f"size {h}x{w} is not a multiple of {sm} (the {info.name} backbone's VAE stride x patch size)",
            f"use --size {max(sm, h // sm * sm)}x{max(sm, w // sm * sm)}",
        )
    return frames, h, w


def encode_all(
    cfg: RunConfig, bb: Backbone, cache: Path, log: Callable[[str], None]
) -> tuple[EncodedConcept, list[EncodedConcept], list[EncodedConcept], str]:
    """The encoded concept(s) of `cfg` (through the cache): (first, all, stitched pairs, cache key)."""
    concepts, keys = [], []
    for one in concept_configs(cfg):  # multi-concept: every concept, and the stitched neighbours (i, i+1)
        enc, k = encode_concept(one, bb, cache, log)
        concepts.append(enc)
        keys.append(k)
    n_concepts, stitched = len(concepts), []
    if n_concepts > 1 and cfg.multi.stitch_rate > 0:
        pairs = [(i, (i + 1) % n_concepts) for i in range(n_concepts if n_concepts > 2 else 1)]
        stitched = [encode_stitched(cfg, bb, pair, cache, log) for pair in pairs]
    return concepts[0], concepts, stitched, run_key(keys)


def concept_configs(cfg: RunConfig) -> list[RunConfig]:
    """The single-concept config of each concept of `cfg` (itself when it has one)."""
    if not cfg.multi.concepts:
        return [cfg]
    return [concept_config(cfg, i) for i in range(len(cfg.concepts()))]


def encode_concept(
    cfg: RunConfig, bb: Backbone, cache_dir: Path, log: Callable[[str], None]
) -> tuple[EncodedConcept, str]:
    """Decode the video, then encode frames, clip and prompts once; cached on disk by content key."""
    if not cfg.data.video:
        raise SetseqError("no training video was given", "pass --video clip.mp4")
    video = Path(cfg.data.video)
    if not video.is_file():
        raise SetseqError(f"video {video} does not exist", "check the --video path")
    frames, h, w = check_shapes(cfg, bb)
    canon, short = concept_key(cfg, bb)
    path = cache_dir / f"{short}.safetensors"
    pool = _swap_pool(cfg)
    cached = load_cache(path, canon, short, pool)
    if cached is not None:
        log(f"cache: reusing {path}")
        return cached, short
    clip = _load_clip(cfg, video, (frames, h, w), bb.info.frame_multiple)
    log(clip.summary())
    mask = None
    if cfg.data.mask:
        mask = load_mask(cfg.data.mask, video, clip, fps=cfg.data.fps, start=cfg.data.start, end=cfg.data.end)
        if cfg.data.mask_degrade:  # an experiment on imperfect masks (BENCHMARKS.md)
            mask, iou = degrade(mask, *parse_degrade(cfg.data.mask_degrade))
            log(f"subject mask: degraded ({cfg.data.mask_degrade}), IoU {iou:.3f} with the given mask")
        if cfg.data.mask_erode or cfg.data.mask_feather:
            mask = edge(mask, cfg.data.mask_erode, cfg.data.mask_feather)
            log(f"subject mask: eroded {cfg.data.mask_erode} px, feathered {cfg.data.mask_feather:g} px")
    enc = _encode_pixels(bb, to_tensor(clip.frames), cfg.concept.t_static, cfg.concept.t_motion, short)
    if mask is not None:
        _encode_subject(cfg, bb, enc, clip.frames, mask, log)
    save_cache(path, enc, canon, pool)
    log(f"cache: wrote {path} (frames {tuple(enc.set_latents.shape)}, clip {tuple(enc.clip_latents.shape)})")
    return enc, short


def concept_fields(cfg: RunConfig, bb: Backbone) -> dict[str, Any]:
    """The fields of one concept's cache key."""
    return {
        **_sampling_key(cfg, bb, check_shapes(cfg, bb), cfg.concept.t_static, cfg.concept.t_motion),
        "backbone": bb.info.name,
        "video_sha256": file_sha256(Path(cfg.data.video)),
        **_mask_key(cfg),  # nothing without a mask: caches made before masks existed keep their key
    }


def run_fields(cfg: RunConfig, bb: Backbone) -> list[dict[str, Any]]:
    """The cache-key fields of each concept of the run."""
    return [concept_fields(one, bb) for one in concept_configs(cfg)]


def concept_key(cfg: RunConfig, bb: Backbone) -> tuple[str, str]:
    """The cache key of one concept's encoding (canonical JSON, short hash)."""
    return cache_key(concept_fields(cfg, bb))


def concept_config(cfg: RunConfig, index: int) -> RunConfig:
    """The single-concept config of concept `index` of a (multi-concept) run."""
    video, concept = cfg.concepts()[index]
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, video=video), concept=concept, multi=MultiConfig()
    )


def encode_stitched(
    cfg: RunConfig, bb: Backbone, pair: tuple[int, int], cache_dir: Path, log: Callable[[str], None]
) -> EncodedConcept:
    """Two concepts' clips side by side (the first on the left) with the prompts "A and B", encoded and
    cached like a concept: the multi-concept training's stitched videos."""
    frames, h, w = check_shapes(cfg, bb)
    a, b = (concept_config(cfg, i) for i in pair)
    t_static = f"{a.concept.t_static} and {b.concept.t_static}"
    t_motion = f"{a.concept.t_motion} and {b.concept.t_motion}"
    canon, short = cache_key(
        {
            **_sampling_key(cfg, bb, (frames, h, w), t_static, t_motion),
            "kind": "stitched",
            "videos": [file_sha256(a.data.video), file_sha256(b.data.video)],
        }
    )
    path = cache_dir / f"stitched-{short}.safetensors"
    cached = load_cache(path, canon, short)
    if cached is not None:
        return cached
    clips = [_load_clip(cfg, Path(c.data.video), (frames, h, w), bb.info.frame_multiple) for c in (a, b)]
    both = torch.cat([to_tensor(clips[0].frames), to_tensor(clips[1].frames)], dim=-1)  # side by side
    enc = _encode_pixels(bb, both, t_static, t_motion, short)
    save_cache(path, enc, canon)
    log(f"cache: wrote {path} (stitched concepts {pair[0] + 1} | {pair[1] + 1}, {h}x{2 * w})")
    return enc


def _sampling_key(
    cfg: RunConfig,
    bb: Backbone,
    shape: tuple[int, int, int],
    t_static: str,
    t_motion: str,
) -> dict[str, Any]:
    """The cache-key fields every encoding shares: the model, how the video is sampled, and the prompts."""
    frames, h, w = shape
    return {
        "fingerprint": bb.info.fingerprint,
        "weights": weights_stamp(bb.info.model_id),
        "size": [h, w],
        "frames": frames,
        "fps": cfg.data.fps,
        "start": cfg.data.start,
        "end": cfg.data.end,
        "t_static": t_static,
        "t_motion": t_motion,
    }


def _load_clip(cfg: RunConfig, video: Path, shape: tuple[int, int, int], frame_multiple: int):
    """The video sampled as the run's config says, at (frames, height, width)."""
    frames, h, w = shape
    return load_clip(
        video,
        frames=frames,
        fps=cfg.data.fps,
        start=cfg.data.start,
        end=cfg.data.end,
        size=(h, w),
        frame_multiple=frame_multiple,
    )


def _mask_key(cfg: RunConfig) -> dict[str, Any]:
    """The cache-key fields of the subject mask and of the background swaps the run needs (the source's
    fields only when they are not the defaults: caches made before them keep their key)."""
    if not cfg.data.mask:
        return {}
    d = cfg.data
    key: dict[str, Any] = {
        "mask_sha256": mask_sha256(d.mask),
        **({"mask_degrade": d.mask_degrade} if d.mask_degrade else {}),
        **({"mask_erode": d.mask_erode} if d.mask_erode else {}),
        **({"mask_feather": d.mask_feather} if d.mask_feather else {}),
        "swap_frames": cfg.stage1.background_swap > 0,
        "swap_clip": cfg.stage2.background_swap > 0,
        "swap_backgrounds": list(d.swap_backgrounds),
    }
    if d.swap_source != "named" or not d.swap_named:
        key |= {"swap_source": d.swap_source, "swap_named": d.swap_named}
        if d.swap_source in ("random", "gradient", "noise"):
            key["swap_count"] = d.swap_count
        if d.swap_source == "textures":
            key["swap_textures_sha256"] = mask_sha256(d.swap_textures)
        if d.swap_source == "generated":
            key |= {"swap_count": d.swap_count, "swap_prompts": scene_prompts(cfg)}
    return key


def scene_prompts(cfg: RunConfig) -> list[str]:
    """The prompts of the `generated` source's scenes: `data.swap_prompts`, or the class on each colour of
    `data.swap_backgrounds` ("a diamond on a gray background")."""
    d = cfg.data
    return list(
        d.swap_prompts or [f"a {cfg.concept.class_word} on a {c} background" for c in d.swap_backgrounds]
    )


def generated_scenes(cfg: RunConfig, bb: Backbone, shape: tuple[int, int, int]) -> list:
    """`data.swap_count` videos (F, H, W, 3) uint8 of `shape` = (frames, height, width) that the model draws
    from `scene_prompts` (cycled, each its own seed) with its sampler's defaults. Called while encoding, before
    any Set-and-Sequence layer is attached: the base model's own scenes."""
    if bb.info.image == "required":
        raise SetseqError(
            f"data.swap_source=generated draws scenes from text, and the {bb.info.name} backbone needs a "
            "first frame for every video",
            "use data.swap_source=textures with images of the scenes",
        )
    prompts, (frames, h, w) = scene_prompts(cfg), shape
    out = []
    for i in range(cfg.data.swap_count):
        with torch.no_grad():
            video = bb.generate(
                prompts[i % len(prompts)], frames=frames, height=h, width=w, seed=SCENE_SEED + i
            )
        out.append(from_tensor(video))
    return out


SCENE_SEED = 20261208  # the generated scenes' first sampling seed


def _swap_pool(cfg: RunConfig) -> list[str]:
    """The names a cache file's swap indices point into: the named colours, or every palette name and ""
    (a background not named in its prompt)."""
    d = cfg.data
    if d.swap_source == "named" and d.swap_named:
        return list(d.swap_backgrounds)
    return [*SWAP_COLOURS, ""]  # (the palette names every background by: `setseq.data.masks`)


def _encode_subject(
    cfg: RunConfig, bb: Backbone, enc: EncodedConcept, frames, mask, log: Callable[[str], None]
) -> None:
    """Add the subject's latent weights to `enc`, and the subject over each swap background where a stage
    swaps backgrounds (frames for stage 1, the clip for stage 2)."""
    enc.subject_set, enc.subject_clip = latent_weights(mask, enc.set_latents.shape, enc.clip_latents.shape)
    if not (cfg.stage1.background_swap > 0 or cfg.stage2.background_swap > 0):
        return
    scenes = None
    if cfg.data.swap_source == "generated":
        scenes = generated_scenes(cfg, bb, frames.shape[:3])
        log(f"subject mask: the model drew {len(scenes)} scenes from {scene_prompts(cfg)}")
    backgrounds = swap_backgrounds(cfg.data, frames, mask, scenes)
    if not backgrounds:
        raise SetseqError(
            "every colour of data.swap_backgrounds is too close to the subject's own to keep it visible",
            "add other colours to data.swap_backgrounds",
        )
    want_set, want_clip = cfg.stage1.background_swap > 0, cfg.stage2.background_swap > 0
    sets, clips = [], []
    with torch.no_grad():  # encode only what a stage swaps: a clip per background is costly on a real VAE
        for bg in backgrounds:
            x = to_tensor(composite_over(frames, mask, bg.image))  # (F, 3, H, W)
            if want_set:
                sets.append(
                    torch.cat([bb.encode_video(x[i : i + 1].unsqueeze(0)) for i in range(x.shape[0])]).cpu()
                )
            if want_clip:
                clips.append(bb.encode_video(x.unsqueeze(0)).cpu())
    names = [bg.name for bg in backgrounds]
    enc.swap_names = names
    enc.swap_set = torch.stack(sets) if want_set else None
    enc.swap_clip = torch.stack(clips) if want_clip else None
    with torch.no_grad():
        enc.swap_static = [bb.encode_prompt([swap_prompt(cfg.concept.t_static, c)]).to("cpu") for c in names]
        enc.swap_motion = [bb.encode_prompt([swap_prompt(cfg.concept.t_motion, c)]).to("cpu") for c in names]
    shown = ", ".join(n or "(not named)" for n in names)
    src = "" if cfg.data.swap_source == "named" else f"{len(names)} {cfg.data.swap_source} backgrounds: "
    log(f"subject mask: backgrounds swapped to {src}{shown}")


def _encode_pixels(bb: Backbone, x: torch.Tensor, t_static: str, t_motion: str, key: str) -> EncodedConcept:
    """Frames (F, 3, H, W) in [-1, 1] -> every frame as a 1-frame latent, the clip, and both prompts; for an
    image-to-video backbone, also the clip's condition on its own first frame (stage 2)."""
    set_lat, clip_lat = encode_latents(bb, x)
    with torch.no_grad():
        static, motion = bb.encode_prompt([t_static]), bb.encode_prompt([t_motion])
    enc = EncodedConcept(set_lat, clip_lat, static.to("cpu"), motion.to("cpu"), key)
    if bb.info.image == "required":
        enc.clip_image = bb.image_condition(x.unsqueeze(0))
    return enc
