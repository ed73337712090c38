"""Before training: each stage's estimated peak memory logged, and a run that would not fit refused with the
cheapest flags that make it fit (checkpointing, micro-batch, fp8, FSDP2 across this machine's GPUs, block
swap). The estimate itself is `setseq.memory`'s."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from setseq import lora as L
from setseq import offload
from setseq.backbones.base import Backbone
from setseq.config import ON_CLIP, RunConfig
from setseq.data.cache import EncodedConcept
from setseq.dtensors import local
from setseq.errors import SetseqError
from setseq.memory import (
    Engine,
    GiB,
    MemoryEstimate,
    device_memory,
    estimate_training_memory,
    tokens_per_sample,
)
from setseq.runtime import visible_gpus

# (flags, applicable, micro-batch, checkpointing, bytes saved by fp8 / block swap)
Remedy = tuple[str, bool, int, bool, int]
HEADROOM = 0.95  # of the device's capacity


def token_summary(cfg: RunConfig, model: nn.Module, data: EncodedConcept) -> str:
    """The tokens a sample and a forward carry in each stage (what memory grows with)."""
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
    engine: Engine = Engine(),
) -> None:
    """Log each stage's estimated peak memory; refuse (naming the flag that fits) when it exceeds the device.
    `engine`: how FSDP2 holds the DiT, if it does (`distributed.parallelize`)."""
    # Prior preservation adds as many class samples as the micro-batch has (train/stage*.py, with_prior).
    per_sample = 2 if cfg.regularizers.prior_videos else 1

    def estimate(stage: int, micro: int, ckpt: bool) -> MemoryEstimate:
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
            engine=engine,
        )

    capacity = device_memory(torch.device(bb.device))
    ckpt = cfg.train.gradient_checkpointing
    for stage, sc in ((1, cfg.stage1), (2, cfg.stage2)):
        micro = sc.micro_batch or sc.batch_size
        est = estimate(stage, micro, ckpt)
        log(f"stage {stage}: estimated peak memory {est.describe()}; the device has {capacity / GiB:.1f} GiB")
        if est.total <= HEADROOM * capacity:
            continue
        floor = estimate(stage, 1, True).total if torch.device(bb.device).type != "cpu" else 0
        fix = next(
            (
                flags
                for flags, applicable, m, c, saved in _remedies(
                    cfg, bb, stage, micro, floor, capacity, engine
                )
                if applicable and estimate(stage, m, c).total - saved <= HEADROOM * capacity
            ),
            "lower --frames or --size (or train on a larger device); train.memory_check=false skips this check",
        )
        raise SetseqError(
            f"stage {stage} needs about {est.total / GiB:.1f} GiB but the device has {capacity / GiB:.1f} GiB",
            fix,
        )


def _fp8_saving(bb: Backbone, engine: Engine) -> int:
    """Device bytes fp8 base weights would save: the targeted weights at 1 byte instead of their own width.
    Under FSDP2 each process holds its shard of them (`local`; none under model.fsdp_offload, which keeps them
    in host memory), plus the blocks gathered at once."""
    saving = 0
    if not engine.offloaded:
        saving = sum(
            local(lay.base.weight).numel() * (lay.base.weight.element_size() - 1)
            for lay in L.get_layers(bb.transformer).values()
        )
    if engine.sharded:  # the blocks FSDP2 holds whole at once
        saving += engine.gathered * max(
            (
                sum(
                    lay.base.weight.numel() * (lay.base.weight.element_size() - 1)
                    for lay in L.get_layers(b).values()
                )
                for b in offload.swappable_blocks(bb.transformer, offload.max_blocks(bb.transformer))
            ),
            default=0,
        )
    return saving


def _remedies(
    cfg: RunConfig, bb: Backbone, stage: int, micro: int, floor: int, capacity: int, engine: Engine
) -> Iterator[Remedy]:
    """What could make stage `stage` fit, cheapest first. `floor`: its estimate at micro-batch 1 with
    checkpointing (0 on the CPU)."""
    name = f"stage{stage}"
    ckpt = cfg.train.gradient_checkpointing
    fp8_saving = _fp8_saving(bb, engine)
    yield ("set train.gradient_checkpointing=true", not ckpt, micro, True, 0)
    yield (f"set {name}.micro_batch=1 (gradient accumulation keeps batch_size)", micro > 1, 1, ckpt, 0)
    yield (
        f"set train.gradient_checkpointing=true and {name}.micro_batch=1",
        micro > 1 and not ckpt,
        1,
        True,
        0,
    )
    yield (
        f"set model.fp8=true, train.gradient_checkpointing=true and {name}.micro_batch=1",
        fp8_saving > 0,
        1,
        True,
        fp8_saving,
    )
    device = torch.device(bb.device)
    if device.type == "cpu":  # on the CPU the host is the device: nothing to shard or swap to
        return
    n_blocks = offload.max_blocks(bb.transformer)
    # FSDP2 (model.fsdp) across the GPUs this machine has: each process keeps 1/P of the blocks'
    # linear weights, plus the whole weights of the block that runs and of those prefetched beside it (of
    # Wan 2.2 A14B's two experts, only the one a step trains runs: `model.expert_routing`).
    if not (cfg.model.fsdp or cfg.model.fsdp_offload or cfg.model.block_swap):
        block_linears = offload.device_linear_bytes(bb.transformer, n_blocks, device)
        gathered = (1 + cfg.model.fsdp_prefetch) * max(
            sum(m.weight.numel() * m.weight.element_size() for m in b.modules() if isinstance(m, nn.Linear))
            for b in offload.swappable_blocks(bb.transformer, n_blocks)
        )
        for p in (2, 4, 8):
            if p <= visible_gpus():
                yield (
                    f"launch {p} processes with model.fsdp=true (accelerate launch --multi_gpu "
                    f"--num_processes {p}), train.gradient_checkpointing=true and {name}.micro_batch=1",
                    True,
                    1,
                    True,
                    block_linears * (p - 1) // p - gathered,
                )
    if cfg.model.fsdp or cfg.model.fsdp_offload:
        return
    # Block swap: the fewest blocks (of each DiT) whose device-resident linear weights close the gap.
    for fp8 in (False, True):
        for n in range(cfg.model.block_swap + 1, n_blocks + 1):
            swapped = offload.device_linear_bytes(bb.transformer, n, device)
            # fp8 then saves on the blocks that stay on the device only (about; targeted weights only)
            extra = fp8_saving * (n_blocks - n) // n_blocks if fp8 else 0
            if floor - extra - swapped <= HEADROOM * capacity:
                flags = "model.fp8=true, " if fp8 else ""
                yield (
                    f"set {flags}model.block_swap={n}, train.gradient_checkpointing=true and {name}.micro_batch=1",
                    fp8_saving > 0 or not fp8,
                    1,
                    True,
                    extra + swapped,
                )
                break
