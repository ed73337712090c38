"""`setseq bench --shape NAME`: the speed of setseq's training steps on a real-size DiT, with no download.

The named architecture (`SHAPES`: the published configs of Wan 2.1 1.3B / 14B, CogVideoX-5B, LTX-Video 0.9,
HunyuanVideo, HunyuanVideo 1.5 and LTX-2) is built with random weights on the device; the backbone around it is the same class `setseq
train` uses, loaded from a tiny pipeline of the same family (its VAE has the real strides and latent channels,
so the backbone's shapes, patching and positions are those of the real model). Latents and prompt embeddings
are random at the real sizes: the text encoder and VAE are not part of a training step (they run once, into
the cache).

For each stage and each frame count it times full optimizer steps through the training code itself
(`setseq.train.loop.denoising_loss`, the LoRA layers, AdamW, clipping) and reports:
- step time (median after warm-up) and the seconds per sample;
- peak memory (CUDA's allocator peak; on CPU, `setseq.memory.PeakMemory`);
- model FLOPs per step and MFU against the device's *measured* dense matmul peak (bf16 on CUDA, the run's
  dtype on CPU). Model FLOPs are counted on a meta-device copy (no memory, no compute): 2 x m x n x k for
  every linear and convolution of the frozen DiT and 4 x B x heads x Lq x Lk x d for attention in the
  forward; the backward adds, where gradients flow (the base weights are frozen, so only to the inputs),
  1x a linear's and 2x an attention's forward. Recomputation under gradient checkpointing and the LoRA's own
  products are not model FLOPs, so they lower MFU, as they should.

On CUDA the default shapes are the paper's: 480x832, 33 and 81 frames, stage 1 on 8 frames, stage 2 on one
clip. On CPU (`--device cpu`) the same architecture runs at small shapes with few layers.

`--procs P` (`setseq.tools.speed_procs`): torchrun starts P processes, each times the same steps with the DiT sharded
across them by FSDP2 when P > 1 (or replicated, `--replicate`), and reports its step time and memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from setseq import lora as L
from setseq import offload
from setseq.backbones.base import Backbone, BenchShape
from setseq.backbones.registry import families, family
from setseq.config import ModelConfig, RunConfig
from setseq.errors import SetseqError
from setseq.memory import PeakMemory, meta_copy, meta_inputs, running_on_meta, tokens_per_sample
from setseq.prompts import PromptEmbeds
from setseq.train.distributed import SINGLE, parallelize
from setseq.train.loop import Batch, make_optimizer
from setseq.train.recipe import Recipe


def _shapes() -> dict[str, BenchShape]:
    """Every family's bench shapes (`Family.shapes`), by name."""
    return {name: shape for fam in families() for name, shape in fam.shapes.items()}


SHAPES = _shapes()


def shape_config(name: str, layers: int | None = None) -> tuple[BenchShape, dict[str, Any]]:
    if name not in SHAPES:
        raise SetseqError(f"unknown shape {name!r}", f"use one of: {', '.join(SHAPES)}")
    shape = SHAPES[name]
    cfg = dict(shape.config)
    if layers is not None:
        for key in shape.layer_keys:
            cfg[key] = layers
    return shape, cfg


def count_parameters(name: str, layers: int | None = None) -> int:
    """Parameters of the named DiT (built on the meta device: no memory)."""
    import diffusers  # (seconds to import: only when a shape is built)

    shape, cfg = shape_config(name, layers)
    with torch.device("meta"):
        model = getattr(diffusers, shape.cls)(**cfg)
    return sum(p.numel() for p in model.parameters())


def build_backbone(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    layers: int | None = None,
    block_swap: int = 0,
    dit_on_host: bool = False,
    dit_on_meta: bool = False,
) -> Backbone:
    """The named real-size DiT, random weights on `device` in `dtype`, inside its family's backbone;
    `block_swap`: built on the host and the last N blocks' linear weights left there (setseq.offload);
    `dit_on_host`: the whole DiT left on the host (for FSDP2 to offload, `model.fsdp_offload`);
    `dit_on_meta`: the DiT on the meta device (an FSDP2 process other than 0, which receives its shards)."""
    import diffusers  # (seconds to import: only when a shape is built)

    target, device = device, (offload.HOST if block_swap or dit_on_host else device)

    shape, cfg = shape_config(name, layers)
    fam = family(shape.family)
    assert fam.backbone is not None and fam.tiny, f"the {fam.name} family has bench shapes but no tiny model"
    torch.manual_seed(0)
    with torch.device("meta" if dit_on_meta else device):
        transformer = getattr(diffusers, shape.cls)(**cfg)  # (the diffusers class the shape names)
    transformer.to(dtype).requires_grad_(False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        # The family's tiny pipeline, with the real-size DiT in place of its tiny one.
        fam.tiny[0].build(tmp, latent_channels=shape.latent_channels)
        pipe = fam.backbone.pipeline_for(tmp).from_pretrained(
            tmp, transformer=None if dit_on_meta else transformer, use_safetensors=True
        )
    pipe.to(device)
    if dit_on_meta:
        pipe.register_modules(transformer=transformer)  # after `to`: meta parameters cannot be copied
    for m in pipe.components.values():
        if isinstance(m, nn.Module):
            m.requires_grad_(False)
    bb = fam.backbone(pipe, f"shape:{name}", device, dtype)
    if dit_on_host:
        offload.place_around_dit(bb, target)
    return offload.swap_and_place(bb, block_swap, target) if block_swap else bb


def random_prompt(shape: BenchShape, device: torch.device, dtype: torch.dtype) -> PromptEmbeds:
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, shape.text_len, shape.text_dim, generator=g).to(device, dtype)
    mask = torch.ones(1, shape.text_len, dtype=torch.bool, device=device)
    pooled = None
    if shape.pooled_dim:
        pooled = torch.randn(1, shape.pooled_dim, generator=g).to(device, dtype)
    return PromptEmbeds(embeds, mask, pooled)


def latent_shape(
    bb: Backbone, frames: int, height: int, width: int, channels: int
) -> tuple[int, int, int, int]:
    """(C, f, h, w) of the latents of a `frames` x `height` x `width` video, from the backbone's VAE strides
    (the real ones: its tiny VAE has them)."""
    p = bb.transformer.config.patch_size
    ss = int(bb.info.spatial_multiple) // int(p[1] if isinstance(p, (list, tuple)) else p)
    st = int(bb.info.frame_multiple)  # VAE temporal stride; LTX's and Hunyuan's temporal patch is 1
    return channels, (frames - 1) // st + 1, height // ss, width // ss


# -- FLOPs ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _count_attention(counter: dict[str, float]) -> Iterator[None]:
    inner = torch.nn.functional.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        names = ("query", "key", "value")
        q, k, _ = (args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names))
        lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
        f = 4.0 * q.numel() / (lq * d) * lq * lk * d  # QK^T and PV
        counter["forward"] += f
        if q.requires_grad or k.requires_grad:
            counter["backward"] += 2.0 * f  # dQ, dK, dV, dP
        return inner(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = inner


def step_flops(
    bb: Backbone, spec: L.LoraSpec, stage: int, micro_batch: int, lat: tuple[int, ...], prompt: PromptEmbeds
) -> dict[str, float]:
    """Model FLOPs of one LoRA training step of `stage` on `micro_batch` latents of shape `lat`: the frozen
    DiT's forward, plus the backward to the inputs of each linear and attention that gradients flow through
    (nothing flows into the text and time embedders). Counted on a meta-device copy with the same LoRA layers;
    the LoRA's own products are left out."""
    meta = meta_copy(bb, spec)
    L.set_stage(meta, stage)  # type: ignore[arg-type]
    layers = L.get_layers(meta).values()
    bases = {id(layer.base) for layer in layers}
    counter = {"forward": 0.0, "backward": 0.0}

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(module, (nn.Linear, L.SetSeqLinear)):
            f = (
                2.0
                * out.numel()
                * (module.base if isinstance(module, L.SetSeqLinear) else module).in_features
            )
        else:  # convolution: 2 x outputs x (in / groups) x kernel volume
            f = 2.0 * out.numel() * module.weight[0].numel()
        counter["forward"] += f
        if args[0].requires_grad:
            counter["backward"] += f

    kinds = (nn.Linear, nn.Conv2d, nn.Conv3d, L.SetSeqLinear)
    hooks = [
        m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, kinds) and id(m) not in bases
    ]
    noisy, sigmas, mp = meta_inputs(bb, micro_batch, lat, prompt)
    try:
        with (
            running_on_meta(bb, meta, "count FLOPs", "report this shape as a bug"),
            _count_attention(counter),
        ):
            L.draw_masks(meta, None)
            bb.predict(noisy, sigmas, mp)
    finally:
        for h in hooks:
            h.remove()
    return counter  # {"forward": ..., "backward": ...}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Measured dense matmul FLOP/s of the device at `dtype`: the fastest of `repeats` n x n x n products
    (a peak, so the best run, not the mean)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- timing -----------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    stage: int
    frames: int
    micro_batch: int
    tokens: int
    step_s: float
    peak_bytes: int
    flops: float
    mfu: float

    def row(self) -> str:
        return (
            f"| {self.stage} | {self.frames} | {self.micro_batch} | {self.tokens} | {self.step_s:.3f} | "
            f"{self.step_s / self.micro_batch:.3f} | {self.peak_bytes / 2**30:.2f} | {self.flops / 1e12:.2f} | "
            f"{100 * self.mfu:.1f}% |"
        )


def time_steps(
    bb: Backbone,
    stage: int,
    lat: tuple[int, ...],
    micro_batch: int,
    prompt: PromptEmbeds,
    *,
    steps: int,
    warmup: int,
    rss: bool = False,
) -> tuple[float, int]:
    """(median seconds of one optimizer step, peak bytes) for `stage` on `micro_batch` random latents.
    On CPU the peak is the tensors' (weights, LoRA, AdamW state, the batch, and the step's own peak), or with
    `rss` the process's peak resident memory over the timed steps (`peak_rss`)."""
    model = bb.transformer
    # The recipe's own optimizer step at the default settings (AdamW, clipping, DropConnect, token masking),
    # every micro-batch of `micro_batch` samples.
    default = RunConfig()
    cfg = dataclasses.replace(
        default,
        stage1=dataclasses.replace(default.stage1, batch_size=micro_batch, micro_batch=None),
        stage2=dataclasses.replace(default.stage2, batch_size=micro_batch, micro_batch=None),
    )
    sc = cfg.stage1 if stage == 1 else cfg.stage2
    recipe = Recipe.for_steps(bb, cfg)
    params = L.set_stage(model, stage, sc.dropconnect)  # type: ignore[arg-type]
    model.train()
    opt = make_optimizer(params, sc)
    g = torch.Generator().manual_seed(stage)
    batch = Batch(torch.randn(micro_batch, *lat, generator=g), prompt.expand(micro_batch))
    dev = bb.device

    def one(i: int) -> None:
        recipe.step(stage, i, opt, params, lambda step, micro, gen: batch)

    for i in range(warmup):
        one(i)
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    elif rss:
        reset_peak_rss()
    for i in range(steps):
        _sync(dev)
        t = time.perf_counter()
        one(warmup + i)
        _sync(dev)
        times.append(time.perf_counter() - t)
    if dev.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(dev))
    elif rss:
        peak = peak_rss()
    else:  # what lives across steps (weights, LoRA, AdamW state, the batch) + the step's own peak
        state = [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
        live = [*model.parameters(), *model.buffers(), *state, batch.latents]
        resident = sum(t.numel() * t.element_size() for t in live)
        with PeakMemory() as pm:
            one(warmup + steps)
        peak = resident + pm.peak
    opt.zero_grad(set_to_none=True)  # the next row starts without this one's gradients
    model.eval()
    return statistics.median(times), peak


def reset_peak_rss() -> None:
    """Start the process's peak resident memory afresh (Linux: /proc/self/clear_refs; elsewhere a no-op, so
    `peak_rss` is then the peak since the process started)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_rss() -> int:
    """The process's peak resident memory in bytes since `reset_peak_rss` (getrusage: kB on Linux)."""
    import resource  # (POSIX only: imported where it is used)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass(frozen=True)
class BenchSizes:
    """What a run of the bench times: the device, dtype, frame counts, video size and block count."""

    device: torch.device
    dtype: torch.dtype
    frames: list[int]
    height: int
    width: int
    layers: int | None

    def rows(self, stage1_batch: int, stage2_batch: int) -> list[tuple[int, int, int]]:
        """(stage, frames, micro-batch) of each timed row: stage 1 on single frames, stage 2 on each clip."""
        return [(1, 1, stage1_batch)] + [(2, f, stage2_batch) for f in self.frames]


def bench_sizes(
    device: str, dtype: str | None, frames: list[int] | None, size: tuple[int, int] | None, layers: int | None
) -> BenchSizes:
    """The bench's defaults resolved: the paper's shapes on CUDA, small ones (2 blocks) on CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SetseqError(
            f"--device {device} but no CUDA device is available", "use --device cpu (small shapes)"
        )
    dev = torch.device(device)
    cpu = dev.type == "cpu"
    dt = getattr(torch, dtype) if dtype else (torch.float32 if cpu else torch.bfloat16)
    height, width = size or ((64, 112) if cpu else (480, 832))
    return BenchSizes(
        dev, dt, frames or ([9] if cpu else [33, 81]), height, width, 2 if cpu and layers is None else layers
    )


def with_lora(bb: Backbone, rank: int, fp8: bool, gradient_checkpointing: bool) -> L.LoraSpec:
    """The bench's LoRA (rank `rank` on the backbone's default targets) injected into `bb`'s DiT."""
    if gradient_checkpointing:
        bb.transformer.enable_gradient_checkpointing()
    spec = L.LoraSpec(
        rank=rank, alpha=float(rank), basis="down", targets=tuple(bb.info.lora_targets), fp8=fp8
    )
    L.inject(bb.transformer, spec)
    return spec


def _bench_model(
    name: str,
    z: BenchSizes,
    rank: int,
    fp8: bool,
    gradient_checkpointing: bool,
    block_swap: int,
    fsdp_offload: bool,
) -> tuple[Backbone, L.LoraSpec]:
    """The bench's backbone with its LoRA, the DiT placed as asked: on the device, block-swapped, or held in
    host memory by FSDP2 (`model.fsdp_offload`)."""
    if block_swap and fsdp_offload:
        raise SetseqError(
            "--block-swap and --fsdp-offload are two ways to keep the DiT in host memory",
            "time them in two runs",
        )
    bb = build_backbone(name, z.device, z.dtype, z.layers, block_swap, dit_on_host=fsdp_offload)
    spec = with_lora(bb, rank, fp8, gradient_checkpointing)
    if fsdp_offload:
        family = shape_config(name, z.layers)[0].family
        parallelize(
            bb.transformer, SINGLE, ModelConfig(family, name, device=str(z.device), fsdp_offload=True)
        )
    return bb, spec


def run_shape_bench(
    name: str,
    *,
    device: str = "auto",
    dtype: str | None = None,
    frames: list[int] | None = None,
    size: tuple[int, int] | None = None,
    layers: int | None = None,
    rank: int = 128,
    stage1_batch: int = 8,
    stage2_batch: int = 1,
    steps: int = 5,
    warmup: int = 2,
    gradient_checkpointing: bool = False,
    fp8: bool = False,
    block_swap: int = 0,
    fsdp_offload: bool = False,
    log: Callable[[str], None] = print,
) -> list[StepResult]:
    """Build the named architecture and time stage-1 and stage-2 steps at each frame count; prints a table.
    `fsdp_offload`: the DiT's weights in host memory, copied in by FSDP2 (`model.fsdp_offload`), the
    alternative to `block_swap`. (The same steps in several launched processes: `setseq.tools.speed_procs`.)"""
    z = bench_sizes(device, dtype, frames, size, layers)
    dev, dt, height, width = z.device, z.dtype, z.height, z.width
    shape, _ = shape_config(name, z.layers)
    full = count_parameters(name)
    log(
        f"{name}: {shape.note}, {full / 1e9:.2f}B parameters"
        + (f"; built with {z.layers} layers" if z.layers else "")
    )
    bb, spec = _bench_model(name, z, rank, fp8, gradient_checkpointing, block_swap, fsdp_offload)
    peak = matmul_peak(dev, dt)
    log(
        f"device {dev}{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}, {dt}, "
        f"measured matmul peak {peak / 1e12:.2f} TFLOP/s; LoRA rank {rank}, {len(L.get_layers(bb.transformer))} "
        f"layers; {height}x{width}; gradient checkpointing {'on' if gradient_checkpointing else 'off'}; "
        f"fp8 {'on' if fp8 else 'off'}; block swap {block_swap}; FSDP2 offload {'on' if fsdp_offload else 'off'}"
    )
    prompt = random_prompt(shape, dev, dt)
    results: list[StepResult] = []
    log("| stage | frames | micro-batch | tokens/sample | step s | s/sample | peak GiB | TFLOP/step | MFU |")
    log("|---|---|---|---|---|---|---|---|---|")
    for stage, f, micro in z.rows(stage1_batch, stage2_batch):
        lat = latent_shape(bb, f, height, width, shape.latent_channels)
        tokens = tokens_per_sample(bb.transformer, lat)
        flops = sum(step_flops(bb, spec, stage, micro, lat, prompt).values())
        try:
            sec, mem = time_steps(bb, stage, lat, micro, prompt, steps=steps, warmup=warmup)
        except torch.OutOfMemoryError:
            log(f"| {stage} | {f} | {micro} | {tokens} | out of memory | | | | |")
            torch.cuda.empty_cache()
            continue
        r = StepResult(stage, f, micro, tokens, sec, mem, flops, flops / sec / peak)
        results.append(r)
        log(r.row())
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    s1 = [r for r in results if r.stage == 1]
    for r in (r for r in results if r.stage == 2 and s1):
        # The paper's schedule: 600 stage-1 steps of 8 frames, 900 stage-2 steps of 8 clips.
        total = 600 * s1[0].step_s / s1[0].micro_batch * 8 + 900 * r.step_s / r.micro_batch * 8
        log(f"projected 600 + 900 steps at batch 8, {r.frames} frames: {total / 60:.1f} min")
    return results
