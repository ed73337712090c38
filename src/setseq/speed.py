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

`--procs P` (`setseq.speed_procs`): torchrun starts P processes, each times the same steps with the DiT sharded
across them by FSDP2 when P > 1 (or replicated, `--replicate`), and reports its step time and memory.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from setseq import lora as L
from setseq.backbones.base import Backbone
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds


@dataclass(frozen=True)
class Shape:
    """A real DiT architecture: its family's backbone, its diffusers class and config, and its text inputs."""

    family: str
    cls: str
    config: dict[str, Any]
    latent_channels: int
    text_len: int
    text_dim: int
    pooled_dim: int | None = None
    layer_keys: tuple[str, ...] = ("num_layers",)
    note: str = ""


def _wan(heads: int, ffn: int, layers: int, note: str) -> Shape:
    """A Wan 2.1 T2V DiT (head dim 128, UMT5-XXL text of 512 x 4096)."""
    config = dict(
        patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
        freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        num_attention_heads=heads, ffn_dim=ffn, num_layers=layers,
    )  # fmt: skip
    return Shape("wan", "WanTransformer3DModel", config, 16, 512, 4096, note=note)


SHAPES: dict[str, Shape] = {
    "wan-1.3b": _wan(12, 8960, 30, "Wan 2.1 T2V 1.3B"),
    "wan-14b": _wan(40, 13824, 40, "Wan 2.1 T2V 14B (one expert of Wan 2.2 A14B has the same shape)"),
    "cogvideox-5b": Shape(
        "cogvideox",
        "CogVideoXTransformer3DModel",
        dict(
            num_attention_heads=48,
            attention_head_dim=64,
            in_channels=16,
            out_channels=16,
            time_embed_dim=512,
            text_embed_dim=4096,
            num_layers=42,
            sample_width=90,
            sample_height=60,
            sample_frames=49,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=226,
            use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=False,
        ),  # fmt: skip
        16,
        226,
        4096,
        note="CogVideoX-5B",
    ),
    "ltx": Shape(
        "ltx",
        "LTXVideoTransformer3DModel",
        dict(
            in_channels=128,
            out_channels=128,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=32,
            attention_head_dim=64,
            cross_attention_dim=2048,
            num_layers=28,
            caption_channels=4096,
        ),  # fmt: skip
        128,
        128,
        4096,
        note="LTX-Video 0.9 (2B)",
    ),
    "hunyuan": Shape(
        "hunyuan",
        "HunyuanVideoTransformer3DModel",
        dict(
            in_channels=16,
            out_channels=16,
            num_attention_heads=24,
            attention_head_dim=128,
            num_layers=20,
            num_single_layers=40,
            num_refiner_layers=2,
            mlp_ratio=4.0,
            patch_size=2,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=4096,
            pooled_projection_dim=768,
            rope_axes_dim=(16, 56, 56),
        ),  # fmt: skip
        16,
        256,
        4096,
        pooled_dim=768,
        layer_keys=("num_layers", "num_single_layers"),
        note="HunyuanVideo (13B)",
    ),
    # The transformer/config.json of Lightricks/LTX-2 (diffusers layout; the rest are the class's defaults):
    # 18.9B, the model card's "19B" (ltx-2-19b-dev), video stream and audio stream together. Text: the
    # connectors' video output, 1024 tokens of Gemma 3's width.
    "ltx-2": Shape(
        "ltx2",
        "LTX2VideoTransformer3DModel",
        dict(
            in_channels=128,
            out_channels=128,
            patch_size=1,
            patch_size_t=1,
            num_layers=48,
            rope_type="split",
            num_attention_heads=32,
            attention_head_dim=128,
            cross_attention_dim=4096,
            caption_channels=3840,
            audio_in_channels=128,
            audio_out_channels=128,
            audio_num_attention_heads=32,
            audio_attention_head_dim=64,
            audio_cross_attention_dim=2048,
        ),  # fmt: skip
        128,
        1024,
        3840,
        note="LTX-2 (19B: video 14B + audio 5B; trained video only)",
    ),
    # The config of hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v (diffusers'
    # scripts/convert_hunyuan_video1_5_to_diffusers.py, TRANSFORMER_CONFIGS["480p_t2v"]; the 720p one differs only
    # in target_size): 8.3B parameters (model card). Text: Qwen2.5-VL's 1000 tokens (3584 wide) and ByT5's 256
    # (1472 wide) side by side, every token valid: the longest prompt, quoting 256 bytes of text to render.
    "hunyuan-1.5": Shape(
        "hunyuan15",
        "HunyuanVideo15Transformer3DModel",
        dict(
            in_channels=65,
            out_channels=32,
            num_attention_heads=16,
            attention_head_dim=128,
            num_layers=54,
            num_refiner_layers=2,
            mlp_ratio=4.0,
            patch_size=1,
            patch_size_t=1,
            qk_norm="rms_norm",
            text_embed_dim=3584,
            text_embed_2_dim=1472,
            image_embed_dim=1152,
            rope_theta=256.0,
            rope_axes_dim=(16, 56, 56),
            target_size=640,
            task_type="t2v",
        ),  # fmt: skip
        32,
        1000 + 256,
        3584,
        note="HunyuanVideo 1.5 (8.3B, 480p T2V)",
    ),
}

# family -> (tiny pipeline builder in setseq.testing, diffusers pipeline class, backbone class)
_FAMILIES = {
    "wan": ("build_tiny_wan", "WanPipeline", "setseq.backbones.wan:WanBackbone"),
    "cogvideox": (
        "build_tiny_cogvideox",
        "CogVideoXPipeline",
        "setseq.backbones.cogvideox:CogVideoXBackbone",
    ),
    "ltx": ("build_tiny_ltx", "LTXPipeline", "setseq.backbones.ltx:LTXBackbone"),
    "hunyuan": (
        "build_tiny_hunyuan",
        "HunyuanVideoPipeline",
        "setseq.backbones.hunyuan:HunyuanVideoBackbone",
    ),
    "ltx2": ("build_tiny_ltx2", "LTX2Pipeline", "setseq.backbones.ltx2:LTX2Backbone"),
    "hunyuan15": (
        "build_tiny_hunyuan15",
        "HunyuanVideo15Pipeline",
        "setseq.backbones.hunyuan15:HunyuanVideo15Backbone",
    ),
}


def shape_config(name: str, layers: int | None = None) -> tuple[Shape, dict[str, Any]]:
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
    import diffusers

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
    import importlib

    import diffusers

    from setseq import offload, testing

    target, device = device, (offload.HOST if block_swap or dit_on_host else device)

    shape, cfg = shape_config(name, layers)
    builder, pipe_cls, bb_path = _FAMILIES[shape.family]
    mod, _, cls = bb_path.partition(":")
    torch.manual_seed(0)
    with torch.device("meta" if dit_on_meta else device):
        transformer = getattr(diffusers, shape.cls)(**cfg)
    transformer.to(dtype).requires_grad_(False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {} if shape.family == "wan" else {"latent_channels": shape.latent_channels}
        getattr(testing, builder)(tmp, **kwargs)
        pipe = getattr(diffusers, pipe_cls).from_pretrained(
            tmp, transformer=None if dit_on_meta else transformer, use_safetensors=True
        )
    pipe.to(device)
    if dit_on_meta:
        pipe.register_modules(transformer=transformer)  # after `to`: meta parameters cannot be copied
    for m in pipe.components.values():
        if isinstance(m, nn.Module):
            m.requires_grad_(False)
    bb = getattr(importlib.import_module(mod), cls)(pipe, f"shape:{name}", device, dtype)
    if dit_on_host:
        offload.place_around_dit(bb, target)
    return offload.swap_and_place(bb, block_swap, target) if block_swap else bb


def random_prompt(shape: Shape, device: torch.device, dtype: torch.dtype) -> PromptEmbeds:
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
    from setseq.memory import meta_copy, meta_inputs, running_on_meta

    meta = meta_copy(bb.transformer, spec)
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
    from setseq.memory import PeakMemory
    from setseq.train.loop import Batch, denoising_loss, step_generator

    model = bb.transformer
    params = L.set_stage(model, stage, dropconnect=0.8 if stage == 1 else 0.5)  # type: ignore[arg-type]
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01)
    g = torch.Generator().manual_seed(stage)
    batch = Batch(torch.randn(micro_batch, *lat, generator=g), prompt.expand(micro_batch))
    dev = bb.device

    def one(i: int) -> None:
        gen = step_generator(0, stage, i)
        L.draw_masks(model, gen)
        opt.zero_grad(set_to_none=True)
        loss = denoising_loss(bb, batch, gen, 0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.05)
        opt.step()

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
    import resource
    import sys

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
        from setseq.config import ModelConfig
        from setseq.train.distributed import SINGLE, parallelize

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
    alternative to `block_swap`. (The same steps in several launched processes: `setseq.speed_procs`.)"""
    from setseq.memory import tokens_per_sample

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
