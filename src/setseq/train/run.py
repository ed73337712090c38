"""`setseq train`: one video in, a personalized model out. Setup, stage 1, stage 2, save, top to bottom.

Run folder:
    config.yaml                 the resolved config (what --resume reads back)
    cache/<key>.safetensors     frame latents, clip latents, prompt embeddings
    checkpoints/stage{S}-{step}/  self-describing checkpoints
    logs/                       TensorBoard events; loss.jsonl
    samples/                    optional sample videos during training
    setseq.safetensors          identity + motion, kept apart (setseq's own file)
    lora_diffusers.safetensors  identity + motion merged at scale 1: loads with WanPipeline.load_lora_weights
    lora_comfyui.safetensors    the same in ComfyUI's key layout
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.distributed.fsdp import FSDPModule

from setseq import __version__, offload
from setseq import lora as L
from setseq.backbones.base import I2V_TRAINING, Backbone
from setseq.config import MultiConfig, RunConfig, resolve_config
from setseq.data.cache import (
    EncodedConcept,
    cache_key,
    encode_latents,
    file_sha256,
    load_cache,
    save_cache,
    weights_stamp,
)
from setseq.data.masks import (
    composite,
    latent_weights,
    load_mask,
    mask_sha256,
    swap_colours_for,
    swap_prompt,
)
from setseq.errors import SetseqError
from setseq.export import check_compatible, export_file, load_setseq, lora_experts, save_setseq
from setseq.io import remove_stale_temps, write_text
from setseq.memory import GiB, device_memory, estimate_training_memory, tokens_per_sample
from setseq.runtime import DTYPES, resolve_device, visible_gpus
from setseq.train import checkpoint as C
from setseq.train.distributed import (
    SINGLE,
    Processes,
    check_split,
    init_processes,
    launcher_asks_fsdp,
    parallelize,
)
from setseq.train.embeddings import DELTA_KEY, TokenEmbeddings, save_embeddings, token_id
from setseq.train.loop import StageContext, trainable_state
from setseq.train.methods import METHODS, ON_CLIP, ONE_STAGE, check_mask, effective_config
from setseq.train.prior import prepare_prior
from setseq.train.stage1_set import train_stage1
from setseq.train.stage2_sequence import train_stage2


def load_model(cfg: RunConfig, device: torch.device | None = None, procs: Processes = SINGLE) -> Backbone:
    """The backbone of `cfg.model`, on `device` (default: `model.device`); with `model.block_swap=N` the last N
    blocks' linear weights stay in host memory (setseq.offload); with `model.fsdp` and several processes, the
    DiT stays in host memory (everything else on `device`) until FSDP2 moves each process's shard of it
    (`distributed.parallelize`), so the whole DiT is never on a card."""
    m = cfg.model
    if m.fsdp and procs.world > 1:
        if m.block_swap or m.fp8:
            raise SetseqError(
                f"model.fsdp=true cannot be combined with {'model.block_swap' if m.block_swap else 'model.fp8'}",
                "use model.fsdp=true alone (it shards the weights across the processes), or drop it",
            )
        from setseq.backbones.base import load_backbone

        bb = load_backbone(m.backbone, m.path, offload.HOST, DTYPES[m.dtype])
        target = device or resolve_device(m.device)
        for mod in {id(v): v for v in vars(bb).values() if isinstance(v, torch.nn.Module)}.values():
            if mod is not bb.transformer:
                mod.to(target)
        bb.device = target
    else:
        bb = offload.load_backbone_swapped(
            cfg.model.backbone,
            cfg.model.path,
            device or resolve_device(cfg.model.device),
            DTYPES[cfg.model.dtype],
            cfg.model.block_swap,
        )
    if bb.info.image == "required":  # an image-to-video DiT: `predict` has no image condition (yet)
        raise SetseqError(*I2V_TRAINING)
    return bb


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
            f"use --frames {lo} or {lo + m}",
        )
    sm = info.spatial_multiple
    if h % sm or w % sm:
        raise SetseqError(
            f"size {h}x{w} is not a multiple of {sm} (the {info.name} backbone's VAE stride x patch size)",
            f"use --size {max(sm, h // sm * sm)}x{max(sm, w // sm * sm)}",
        )
    return frames, h, w


def encode_concept(
    cfg: RunConfig, bb: Backbone, cache_dir: Path, log: Callable[[str], None]
) -> tuple[EncodedConcept, str]:
    """Decode the video, then encode frames, clip and prompts once; cached on disk by content key."""
    from setseq.data.video import load_clip, to_tensor

    if not cfg.data.video:
        raise SetseqError("no training video was given", "pass --video clip.mp4")
    video = Path(cfg.data.video)
    if not video.is_file():
        raise SetseqError(f"video {video} does not exist", "check the --video path")
    frames, h, w = check_shapes(cfg, bb)
    canon, short = cache_key(
        {
            "backbone": bb.info.name,
            "model": bb.info.model_id,
            "fingerprint": bb.info.fingerprint,
            "weights": weights_stamp(bb.info.model_id),
            "video_sha256": file_sha256(video),
            "size": [h, w],
            "frames": frames,
            "fps": cfg.data.fps,
            "start": cfg.data.start,
            "end": cfg.data.end,
            "t_static": cfg.concept.t_static,
            "t_motion": cfg.concept.t_motion,
            **_mask_key(cfg),  # nothing without a mask: caches made before masks existed keep their key
        }
    )
    path = cache_dir / f"{short}.safetensors"
    pool = list(cfg.data.swap_backgrounds)
    cached = load_cache(path, canon, short, pool)
    if cached is not None:
        log(f"cache: reusing {path}")
        return cached, short
    clip = load_clip(
        video, frames=frames, fps=cfg.data.fps, start=cfg.data.start, end=cfg.data.end, size=(h, w)
    )
    log(clip.summary())
    mask = None
    if cfg.data.mask:
        mask = load_mask(cfg.data.mask, video, clip, fps=cfg.data.fps, start=cfg.data.start, end=cfg.data.end)
    enc = _encode_pixels(bb, to_tensor(clip.frames), cfg.concept.t_static, cfg.concept.t_motion, short)
    if mask is not None:
        _encode_subject(cfg, bb, enc, clip.frames, mask, log)
    save_cache(path, enc, canon, pool)
    log(f"cache: wrote {path} (frames {tuple(enc.set_latents.shape)}, clip {tuple(enc.clip_latents.shape)})")
    return enc, short


def _mask_key(cfg: RunConfig) -> dict[str, Any]:
    """The cache-key fields of the subject mask and of the background swaps the run needs."""
    if not cfg.data.mask:
        return {}
    return {
        "mask_sha256": mask_sha256(cfg.data.mask),
        "swap_frames": cfg.stage1.background_swap > 0,
        "swap_clip": cfg.stage2.background_swap > 0,
        "swap_backgrounds": list(cfg.data.swap_backgrounds),
    }


def _encode_subject(
    cfg: RunConfig, bb: Backbone, enc: EncodedConcept, frames, mask, log: Callable[[str], None]
) -> None:
    """Add the subject's latent weights to `enc`, and the subject over each swap background where a stage
    swaps backgrounds (frames for stage 1, the clip for stage 2)."""
    from setseq.data.video import to_tensor

    enc.subject_set, enc.subject_clip = latent_weights(mask, enc.set_latents.shape, enc.clip_latents.shape)
    if not (cfg.stage1.background_swap > 0 or cfg.stage2.background_swap > 0):
        return
    names = swap_colours_for(frames, mask, list(cfg.data.swap_backgrounds))
    if not names:
        raise SetseqError(
            "every colour of data.swap_backgrounds is too close to the subject's own to keep it visible",
            "add other colours to data.swap_backgrounds",
        )
    want_set, want_clip = cfg.stage1.background_swap > 0, cfg.stage2.background_swap > 0
    sets, clips = [], []
    with torch.no_grad():  # encode only what a stage swaps: a clip per colour is costly on a real VAE
        for colour in names:
            x = to_tensor(composite(frames, mask, colour))  # (F, 3, H, W)
            if want_set:
                sets.append(
                    torch.cat([bb.encode_video(x[i : i + 1].unsqueeze(0)) for i in range(x.shape[0])]).cpu()
                )
            if want_clip:
                clips.append(bb.encode_video(x.unsqueeze(0)).cpu())
    enc.swap_names = names
    enc.swap_set = torch.stack(sets) if want_set else None
    enc.swap_clip = torch.stack(clips) if want_clip else None
    with torch.no_grad():
        enc.swap_static = [bb.encode_prompt([swap_prompt(cfg.concept.t_static, c)]).to("cpu") for c in names]
        enc.swap_motion = [bb.encode_prompt([swap_prompt(cfg.concept.t_motion, c)]).to("cpu") for c in names]
    log(f"subject mask: backgrounds swapped to {', '.join(names)}")


def _encode_pixels(bb: Backbone, x: torch.Tensor, t_static: str, t_motion: str, key: str) -> EncodedConcept:
    """Frames (F, 3, H, W) in [-1, 1] -> every frame as a 1-frame latent, the clip, and both prompts."""
    set_lat, clip_lat = encode_latents(bb, x)
    with torch.no_grad():
        static, motion = bb.encode_prompt([t_static]), bb.encode_prompt([t_motion])
    return EncodedConcept(set_lat, clip_lat, static.to("cpu"), motion.to("cpu"), key)


def concept_config(cfg: RunConfig, index: int) -> RunConfig:
    """The single-concept config of concept `index` of a (multi-concept) run."""
    import dataclasses

    video, concept = cfg.concepts()[index]
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, video=video), concept=concept, multi=MultiConfig()
    )


def encode_stitched(
    cfg: RunConfig, bb: Backbone, pair: tuple[int, int], cache_dir: Path, log: Callable[[str], None]
) -> EncodedConcept:
    """Two concepts' clips side by side (the first on the left) with the prompts "A and B", encoded and
    cached like a concept: the multi-concept training's stitched videos."""
    from setseq.data.video import load_clip, to_tensor

    frames, h, w = check_shapes(cfg, bb)
    a, b = (concept_config(cfg, i) for i in pair)
    t_static = f"{a.concept.t_static} and {b.concept.t_static}"
    t_motion = f"{a.concept.t_motion} and {b.concept.t_motion}"
    canon, short = cache_key(
        {
            "kind": "stitched",
            "fingerprint": bb.info.fingerprint,
            "weights": weights_stamp(bb.info.model_id),
            "videos": [file_sha256(a.data.video), file_sha256(b.data.video)],
            "size": [h, w],
            "frames": frames,
            "fps": cfg.data.fps,
            "start": cfg.data.start,
            "end": cfg.data.end,
            "t_static": t_static,
            "t_motion": t_motion,
        }
    )
    path = cache_dir / f"stitched-{short}.safetensors"
    cached = load_cache(path, canon, short)
    if cached is not None:
        return cached
    clips = [
        load_clip(
            c.data.video, frames=frames, fps=cfg.data.fps, start=cfg.data.start, end=cfg.data.end, size=(h, w)
        )
        for c in (a, b)
    ]
    both = torch.cat([to_tensor(clips[0].frames), to_tensor(clips[1].frames)], dim=-1)  # side by side
    enc = _encode_pixels(bb, both, t_static, t_motion, short)
    save_cache(path, enc, canon)
    log(f"cache: wrote {path} (stitched concepts {pair[0] + 1} | {pair[1] + 1}, {h}x{2 * w})")
    return enc


def self_conditioning_p(cfg: RunConfig, bb: Backbone) -> float:
    """The self-conditioning probability for this run: the configured one, or by default 0.9 on a backbone
    pretrained with a self-conditioning input and 0 on one without. Asking for it on a backbone without
    one is an error."""
    p = cfg.regularizers.self_conditioning
    supported = bool(bb.info.supports_self_conditioning)
    if p is None:
        return 0.9 if supported else 0.0
    if p > 0 and not supported:
        raise SetseqError(
            f"regularizers.self_conditioning={p} but the {bb.info.name} backbone has no self-conditioning input",
            "set regularizers.self_conditioning=0 (only a model pretrained with one, like the toy model, has it)",
        )
    return float(p)


def lora_spec(cfg: RunConfig, bb: Backbone) -> L.LoraSpec:
    return L.LoraSpec(
        cfg.lora.rank,
        cfg.lora.scale_alpha,
        cfg.lora.basis,  # type: ignore[arg-type]
        tuple(cfg.lora.targets or bb.info.lora_targets),
        cfg.lora.path,  # type: ignore[arg-type]
        fp8=cfg.model.fp8,
    )


def lora_metadata(
    cfg: RunConfig, bb: Backbone, spec: L.LoraSpec, frames: int, h: int, w: int
) -> dict[str, Any]:
    return {
        "backbone": bb.info.name,
        "model_id": cfg.model.path,
        "dtype": cfg.model.dtype,
        "fingerprint": bb.info.fingerprint,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "basis": spec.basis,
        "targets": list(spec.targets),
        "token": cfg.concept.token,
        "class_word": cfg.concept.class_word,
        "motion_token": cfg.concept.motion_token,
        "t_static": cfg.concept.t_static,
        "t_motion": cfg.concept.t_motion,
        "identity_scale": 1.0,
        "motion_scale": 1.0,
        "frames": frames,
        "size": [h, w],
        "guidance_scale": cfg.train.guidance_scale,
        "stage1_steps": cfg.stage1.steps,
        "stage2_steps": cfg.stage2.steps,
        "method": cfg.method,
        "tokens": [t for _, c in cfg.concepts() for t in (c.token, c.motion_token)],
        "setseq_version": __version__,
    }


def _token_summary(cfg: RunConfig, model: torch.nn.Module, data: EncodedConcept) -> str:
    t1 = tokens_per_sample(model, tuple(data.set_latents.shape[1:]))
    t2 = tokens_per_sample(model, tuple(data.clip_latents.shape[1:]))
    m1, m2 = cfg.stage1.micro_batch or cfg.stage1.batch_size, cfg.stage2.micro_batch or cfg.stage2.batch_size
    return (
        f"tokens per sample: stage 1 {t1} (one frame), stage 2 {t2} (the clip); per forward: "
        f"stage 1 {t1 * m1} ({m1} x {cfg.stage1.accumulation} accumulation), stage 2 {t2 * m2} "
        f"({m2} x {cfg.stage2.accumulation}); lower stage2.micro_batch or --frames/--size if memory runs out"
    )


def check_memory(
    cfg: RunConfig,
    bb: Backbone,
    spec: L.LoraSpec,
    data: EncodedConcept,
    self_conditioning: bool,
    log: Callable[[str], None],
) -> None:
    """Log each stage's estimated peak memory; refuse (naming the flag that fits) when it exceeds the device."""

    def estimate(stage: int, micro: int, ckpt: bool):
        sc = cfg.stage1 if stage == 1 else cfg.stage2
        on_clip = stage == 2 or cfg.method in ON_CLIP  # the one-stage baselines train on the clip
        lat = data.clip_latents if on_clip else data.set_latents
        prompt = data.motion if on_clip else data.static
        return estimate_training_memory(
            bb,
            spec,
            tuple(lat.shape[1:]),
            prompt,
            micro_batch=micro * per_sample,
            stage=stage,
            dropconnect=sc.dropconnect,
            gradient_checkpointing=ckpt,
            self_conditioning=self_conditioning,
        )

    # Prior preservation adds as many class samples as the micro-batch has (train/stage*.py, with_prior).
    per_sample = 2 if cfg.regularizers.prior_videos else 1

    capacity = device_memory(torch.device(bb.device))
    ckpt = cfg.train.gradient_checkpointing
    for stage, sc in ((1, cfg.stage1), (2, cfg.stage2)):
        micro = sc.micro_batch or sc.batch_size
        est = estimate(stage, micro, ckpt)
        log(f"stage {stage}: estimated peak memory {est.describe()}; the device has {capacity / GiB:.1f} GiB")
        if est.total <= 0.95 * capacity:
            continue
        name = f"stage{stage}"
        # What fp8 base weights would save: the targeted weights at 1 byte instead of their own width.
        fp8_saving = sum(
            lay.base.weight.numel() * (lay.base.weight.element_size() - 1)
            for lay in L.get_layers(bb.transformer).values()
        )
        options = [  # (flags, applicable, micro-batch, checkpointing, bytes saved by fp8 / block swap), cheapest first
            ("set train.gradient_checkpointing=true", not ckpt, micro, True, 0),
            (f"set {name}.micro_batch=1 (gradient accumulation keeps batch_size)", micro > 1, 1, ckpt, 0),
            (
                f"set train.gradient_checkpointing=true and {name}.micro_batch=1",
                micro > 1 and not ckpt,
                1,
                True,
                0,
            ),
            (
                f"set model.fp8=true, train.gradient_checkpointing=true and {name}.micro_batch=1",
                fp8_saving > 0 and not cfg.model.fsdp,  # (fsdp is not combined with fp8 or block swap)
                1,
                True,
                fp8_saving,
            ),
        ]
        device = torch.device(bb.device)
        n_blocks = offload.max_blocks(bb.transformer)
        floor = estimate(stage, 1, True).total if device.type != "cpu" else 0
        # FSDP2 (model.fsdp) across the GPUs this machine has: each process keeps 1/P of the blocks'
        # linear weights, plus the whole weights of the block that runs and of those prefetched beside it.
        if (
            device.type != "cpu"
            and not (cfg.model.fsdp or cfg.model.block_swap)
            and len(offload.dits(bb.transformer)) == 1
        ):
            block_linears = offload.device_linear_bytes(bb.transformer, n_blocks, device)
            gathered = (1 + cfg.model.fsdp_prefetch) * max(
                sum(
                    m.weight.numel() * m.weight.element_size()
                    for m in b.modules()
                    if isinstance(m, nn.Linear)
                )
                for b in offload.swappable_blocks(bb.transformer, n_blocks)
            )
            for p in (2, 4, 8):
                if p <= visible_gpus():
                    options.append(
                        (
                            f"launch {p} processes with model.fsdp=true (accelerate launch --multi_gpu "
                            f"--num_processes {p}), train.gradient_checkpointing=true and {name}.micro_batch=1",
                            True,
                            1,
                            True,
                            block_linears * (p - 1) // p - gathered,
                        )
                    )
        # Block swap: the fewest blocks (of each DiT) whose device-resident linear weights close the gap.
        swap_applies = device.type != "cpu" and not cfg.model.fsdp  # on CPU the host is the device
        for fp8 in (False, True) if swap_applies else ():
            for n in range(cfg.model.block_swap + 1, n_blocks + 1):
                swapped = offload.device_linear_bytes(bb.transformer, n, device)
                # fp8 then saves on the blocks that stay on the device only (about; targeted weights only)
                extra = fp8_saving * (n_blocks - n) // n_blocks if fp8 else 0
                if floor - extra - swapped <= 0.95 * capacity:
                    flags = "model.fp8=true, " if fp8 else ""
                    options.append(
                        (
                            f"set {flags}model.block_swap={n}, train.gradient_checkpointing=true and "
                            f"{name}.micro_batch=1",
                            fp8_saving > 0 or not fp8,
                            1,
                            True,
                            extra + swapped,
                        )
                    )
                    break
        fix = next(
            (
                flags
                for flags, applicable, m, c, saved in options
                if applicable and estimate(stage, m, c).total - saved <= 0.95 * capacity
            ),
            "lower --frames or --size (or train on a larger device); train.memory_check=false skips this check",
        )
        raise SetseqError(
            f"stage {stage} needs about {est.total / GiB:.1f} GiB but the device has {capacity / GiB:.1f} GiB",
            fix,
        )


def _writer(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    return SummaryWriter(str(run_dir / "logs"))


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    init_lora: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Personalize the model to the video: stage 1 then stage 2. Returns the run folder."""
    run_dir = Path(out)
    # 1. The run folder: new, or resumed from its own config. Under a launcher (several processes), process 0
    # alone writes and logs; the others wait for it where they read what it wrote.
    ck = None
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise SetseqError(
                f"{run_dir} is not a setseq run folder (no config.yaml)",
                "pass the --out folder of an earlier run to --resume",
            )
        cfg = resolve_config(run_dir / "config.yaml")
    check_mask(cfg)  # a subject mask missing, or unusable, is refused before anything is loaded or written
    procs = init_processes(cfg.model.device)
    if not procs.is_main:
        log = _silent
    if procs.world > 1 and not cfg.model.fsdp and launcher_asks_fsdp():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fsdp=True))
        log("fsdp: on (the accelerate config has distributed_type FSDP, fsdp_version 2)")
    if resume:
        if procs.is_main:
            for folder in (run_dir, *(run_dir / f for f in ("cache", "checkpoints", "logs", "samples"))):
                remove_stale_temps(folder)  # temporary files of a killed run (never taken for outputs)
        ck = C.latest_checkpoint(run_dir)
        if ck is None:  # stopped before its first checkpoint: start over, exactly as configured
            log(f"resuming {run_dir}: no checkpoint yet, starting from step 0 with its saved config")
        else:
            log(f"resuming {run_dir} from {ck.path.name} (stage {ck.stage}, step {ck.step})")
            was = int(ck.state.get("processes", 1))
            if was != procs.world:  # whole tensors on file: any count that splits the batch resumes it
                log(
                    f"note: the checkpoint was written by {was} process(es), resumed by {procs.world}: the same "
                    "global batch, so the same training up to float summation order"
                )
    else:
        if (run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists():
            raise SetseqError(
                f"{run_dir} already holds a run",
                f"continue it with `setseq train --resume {run_dir}`, or choose another --out",
            )
        fresh_dir = not run_dir.exists()
        if procs.is_main:
            remove_stale_temps(run_dir / "cache")  # a killed first start's leftovers
            remove_stale_temps(run_dir, stems=("config",))
    procs.barrier()

    # 2. Model, data, cache.
    bb = load_model(cfg, procs.device, procs)
    sharded = cfg.model.fsdp and procs.world > 1
    if cfg.model.fsdp and not sharded:
        log("note: model.fsdp=true with one process shards nothing (launch several to shard the base model)")
    if cfg.model.block_swap:
        host = [m.weight for m in bb.transformer.modules() if isinstance(m, offload.StreamedLinear)]
        log(
            f"block swap: {len(host)} linear weights of the last {cfg.model.block_swap} blocks "
            f"({sum(w.numel() * w.element_size() for w in host) / GiB:.2f} GiB) stay in host memory, "
            f"copied to {bb.device} layer by layer"
        )
    frames, h, w = check_shapes(cfg, bb)
    user_cfg, cfg = cfg, effective_config(cfg)  # a baseline method changes stages and regularizers
    cfg = split_across(cfg, procs.world, log)
    sc_p = self_conditioning_p(cfg, bb)
    if cfg.concept.train_embedding and procs.world > 1:  # its offsets live outside the DiT's engine
        raise SetseqError(
            f"token embeddings (concept.train_embedding or method={cfg.method}) train in one process only, "
            f"not {procs.world}",
            "launch a single process, or set concept.train_embedding=false",
        )
    if cfg.concept.train_embedding:  # refuse tokens the text encoder cannot learn before anything is written
        for _, c in cfg.concepts():
            token_id(bb, c.token), token_id(bb, c.motion_token)
    try:
        with procs.main_first():  # process 0 encodes and caches; the others then read its cache
            data, concepts, stitched, key = encode_all(cfg, bb, run_dir / "cache", log)
    except BaseException:
        if not resume and fresh_dir and procs.is_main:  # nothing of this run is worth keeping: no folder
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not resume and procs.is_main:
        # Written once the inputs are known good, so a failed start can simply be run again.
        write_text(run_dir / "config.yaml", user_cfg.to_yaml())
    if ck is not None and ck.state.get("cache_key") not in (None, key):
        raise SetseqError(
            f"the video, model or prompts changed since {run_dir} started (cache key {key} vs {ck.state.get('cache_key')})",
            "start a new run with --init-lora instead of --resume",
        )

    # Prior preservation: the base model's own class videos, generated before any LoRA exists. A sharded
    # model (FSDP2) generates them later, once sharded, with the LoRA switched off.
    prior = None
    if not sharded:
        with procs.main_first():
            prior = prepare_prior(cfg, bb, frames, h, w, run_dir / "cache", log, progress and procs.is_main)

    # 3. The Set-and-Sequence layers, from a checkpoint or from --init-lora weights.
    spec = lora_spec(cfg, bb)
    model = bb.transformer
    if cfg.train.gradient_checkpointing:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise SetseqError(
                f"the {bb.info.name} DiT does not support gradient checkpointing",
                "set train.gradient_checkpointing=false",
            )
        model.enable_gradient_checkpointing()
    L.inject(model, spec, seed=cfg.train.seed)
    n_params = sum(p.numel() for layer in L.get_layers(model).values() for p in (layer.down, layer.up))
    log(
        f"LoRA: {len(L.get_layers(model))} layers, rank {spec.rank}, basis {spec.basis}, {n_params / 1e6:.2f}M identity parameters"
    )
    log(_token_summary(cfg, model, data))
    if ck is not None:
        L.load_state(model, ck.lora(), parts=("identity", "motion") if ck.stage == 2 else ("identity",))
    elif init_lora is not None:
        src = load_setseq(init_lora)
        for w_ in check_compatible(src, bb.info.name, bb.info.fingerprint, init_lora):
            log(f"warning: {w_}")
        L.load_state(
            model,
            src.tensors,
            parts=("identity", "motion") if any(".motion." in k for k in src.tensors) else ("identity",),
        )
        log(f"initialised from {init_lora}")

    # torch's engine (several processes): FSDP2 replicate for the LoRA gradients, or fully_shard (model.fsdp)
    parallelize(model, procs, cfg.model)
    if cfg.train.memory_check:
        try:
            check_memory(cfg, bb, spec, data, sc_p > 0, log)
        except SetseqError:
            if (
                not resume and fresh_dir and procs.is_main
            ):  # refused: the same command, with the flag, runs again
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    if sharded:
        units = sum(isinstance(m, FSDPModule) for m in model.modules())
        log(f"fsdp: the DiT is sharded across {procs.world} processes by FSDP2 ({units} units)")
        # Every process runs the sharded DiT together (each block gathers from all), process 0 alone saving.
        L.set_scales(model, 0.0, 0.0)  # the base model alone (the layers skip the LoRA)
        prior = prepare_prior(
            cfg, bb, frames, h, w, run_dir / "cache", log, progress and procs.is_main, save=procs.is_main
        )
        L.set_scales(model, 1.0, 1.0)
        procs.barrier()
        if not procs.is_main and prior is not None:  # the same videos as process 0's, from its cache
            prior = prepare_prior(cfg, bb, frames, h, w, run_dir / "cache", log, False)

    writer = _writer(run_dir, cfg.train.tensorboard and procs.is_main)
    log_file = run_dir / "logs" / "loss.jsonl" if procs.is_main else None
    ctx = StageContext(
        cfg, bb, data, run_dir, writer, log_file, progress and procs.is_main, {"cache_key": key}
    )
    ctx.procs = procs
    ctx.prior, ctx.self_conditioning = prior, sc_p
    ctx.concepts, ctx.stitched = concepts, stitched
    ctx.texts = [(c.t_static, c.t_motion) for _, c in cfg.concepts()]
    emb = None
    if cfg.concept.train_embedding:  # optional textual inversion of the concept tokens
        pairs = [(c.token, c.motion_token) for _, c in cfg.concepts()]
        emb = TokenEmbeddings(bb, [t for pair in pairs for t in pair], cfg.concept.embedding_lr)
        appearance, motion = list(range(0, 2 * len(pairs), 2)), list(range(1, 2 * len(pairs), 2))
        emb.stage_rows = {1: appearance + (motion if cfg.method in ONE_STAGE else []), 2: motion}
        saved = ck.lora().get(DELTA_KEY) if ck is not None else None
        if saved is not None:  # resumed: the offsets as checkpointed
            with torch.no_grad():
                emb.delta.copy_(saved)
        log(f"token embeddings: learning {', '.join(emb.tokens)} at lr {emb.lr}")
    ctx.embeddings = emb
    if len(concepts) > 1:
        log(
            f"multi-concept: {len(concepts)} concepts ({', '.join(c.token for _, c in cfg.concepts())}), "
            f"{len(stitched)} stitched pair(s) at rate {cfg.multi.stitch_rate if stitched else 0}"
        )
    log(f"method: {cfg.method} ({METHODS[cfg.method]})")
    log(
        f"regularizers: token mask {cfg.regularizers.token_mask}, self-conditioning {sc_p}, "
        + (
            f"prior preservation {len(prior)} videos x weight {cfg.regularizers.prior_weight}"
            if prior is not None
            else "no prior preservation"
        )
    )
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    # Samples: process 0 generates and writes them; with a sharded model every process generates with it.
    if procs.is_main or sharded:
        ctx.on_sample = _sampler(ctx, frames, h, w, write=procs.is_main)
    try:
        # 4. Stage 1: identity on the unordered frames.
        if ck is None or ck.stage == 1:
            train_stage1(ctx, ck)
            ck = None
        # 5. Stage 2: motion residual on the ordered clip.
        train_stage2(ctx, ck)
    finally:
        if writer is not None:
            writer.close()

    # 6. Outputs: setseq's own file, then the merged LoRA in diffusers' and ComfyUI's layouts.
    final = trainable_state(model, 2)  # (every process takes part in gathering sharded tensors)
    if not procs.is_main:
        procs.barrier()  # returns once process 0 has written them
        return run_dir
    meta = lora_metadata(cfg, bb, spec, frames, h, w)
    save_setseq(run_dir / "setseq.safetensors", final, meta)
    lora = load_setseq(run_dir / "setseq.safetensors")
    formats = ["diffusers"] + (["comfyui"] if bb.info.name == "wan" else [])  # the toy model: no ComfyUI
    written = [
        export_file(lora, fmt, run_dir / f"lora_{fmt}{f'_{e}_noise' if e else ''}.safetensors", expert=e)
        for fmt in formats
        for e in (lora_experts(lora) or [None])  # Wan 2.2 A14B: one file per expert
    ]
    if emb is not None:
        written += save_embeddings(run_dir, emb)
        emb.remove()
    log(f"wrote {run_dir / 'setseq.safetensors'} and {', '.join(p.name for p in written)}")
    procs.barrier()
    return run_dir


def encode_all(
    cfg: RunConfig, bb: Backbone, cache: Path, log: Callable[[str], None]
) -> tuple[EncodedConcept, list[EncodedConcept], list[EncodedConcept], str]:
    """The encoded concept(s) of `cfg` (through the cache): (first, all, stitched pairs, cache key)."""
    data, key = encode_concept(concept_config(cfg, 0) if cfg.multi.concepts else cfg, bb, cache, log)
    concepts, stitched = [data], []
    n_concepts = len(cfg.concepts())
    if n_concepts > 1:  # multi-concept: every concept, and the stitched neighbours (i, i+1)
        keys = [key]
        for i in range(1, n_concepts):
            enc, k = encode_concept(concept_config(cfg, i), bb, cache, log)
            concepts.append(enc)
            keys.append(k)
        if cfg.multi.stitch_rate > 0:
            pairs = [(i, (i + 1) % n_concepts) for i in range(n_concepts if n_concepts > 2 else 1)]
            stitched = [encode_stitched(cfg, bb, pair, cache, log) for pair in pairs]
        key = cache_key({"concepts": keys})[1]
    return data, concepts, stitched, key


def _silent(_message: str) -> None:
    """The log of processes other than process 0."""


def split_across(cfg: RunConfig, world: int, log: Callable[[str], None]) -> RunConfig:
    """`cfg` with each stage's micro_batch set so that `world` processes share its micro-batches equally."""
    if world == 1:
        return cfg
    stages = {}
    for i, sc in ((1, cfg.stage1), (2, cfg.stage2)):
        micro = check_split(i, sc.batch_size, sc.micro_batch, world)
        stages[f"stage{i}"] = dataclasses.replace(sc, micro_batch=micro)
        log(
            f"data parallel: {world} processes; stage {i}: {sc.batch_size // micro} micro-batch(es) of {micro} "
            f"per step, {sc.batch_size // micro // world} per process"
        )
    return dataclasses.replace(cfg, **stages)


def _sampler(
    ctx: StageContext, frames: int, h: int, w: int, write: bool = True
) -> Callable[[int, int], None]:
    def sample(stage: int, step: int) -> None:
        from setseq.data.video import from_tensor, write_video

        prompt = ctx.cfg.concept.t_static if stage == 1 else ctx.cfg.concept.t_motion
        with torch.no_grad():
            video = ctx.backbone.generate(
                prompt,
                frames=frames,
                height=h,
                width=w,
                steps=ctx.cfg.train.sample_steps,
                guidance_scale=ctx.cfg.train.guidance_scale,
                seed=ctx.cfg.train.seed,
            )
        if write:
            write_video(ctx.run_dir / "samples" / f"stage{stage}-{step:06d}.mp4", from_tensor(video))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # release sampling memory before training resumes

    return sample


def read_run_config(run_dir: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, yaml.YAMLError):
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return {}
