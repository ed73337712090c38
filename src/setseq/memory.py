"""Peak-memory estimate of a training step, before training, and the refusal of a step that cannot fit.

The estimate runs the step's forward on a *meta-device* copy of the DiT (same config, the same LoRA layers,
no memory, no FLOPs) and counts, through `torch.autograd.graph.saved_tensors_hooks`, every tensor autograd keeps
for backward, deduplicated by storage. Attention is counted as the fused kernels keep it (q, k, v, output and
the log-sum-exp, never the (tokens x tokens) scores), which is what CUDA and PyTorch's CPU flash kernel do.
Per DiT block it also records the block's saved bytes and its input, so gradient checkpointing is modelled
exactly: blocks keep only their input, and one block's activations are rebuilt at a time during backward.

    total = weights on the device (DiT, text encoder, VAE)
          + LoRA parameters + this stage's gradients and two AdamW moments (float32)
          + activations saved for backward (per micro-batch)
          + the backward's transient: the gradients flowing through one block (and, under checkpointing, that
            block's recomputed activations) and the largest single saved tensor

`tests/test_memory.py` checks the estimate against the peak measured by `PeakMemory` on CPU.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from setseq import lora as L
from setseq.dtensors import local
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds

GiB = float(1 << 30)


@dataclass(frozen=True)
class Engine:
    """How torch's engine holds the DiT, as `setseq.train.distributed.parallelize` returns it: what the memory
    estimate needs to know of FSDP2, handed to it (nothing is read back off the model)."""

    sharded: bool = False  # FSDP2 holds the DiT's base weights (fully_shard across processes, or offload)
    offloaded: bool = False  # ... in host memory (model.fsdp_offload): no base weight stays on the device
    gathered: int = 1  # blocks whole on the device at once (1 + model.fsdp_prefetch)
    param_dtype: torch.dtype | None = None  # what they are gathered in (None: as stored, fp8 included)


@dataclass
class MemoryEstimate:
    """Bytes of one training step's peak, by part."""

    tokens: int  # DiT tokens per forward (micro-batch x tokens per sample)
    weights: int
    lora: int  # LoRA parameters, gradients and AdamW moments
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations + self.transient

    def describe(self) -> str:
        return (
            f"{self.total / GiB:.2f} GiB (weights {self.weights / GiB:.2f}, LoRA + optimizer {self.lora / GiB:.2f}, "
            f"activations {self.activations / GiB:.2f}, backward transient {self.transient / GiB:.2f})"
        )


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The DiT's transformer blocks: the members of its top-level ModuleLists (`blocks`, `transformer_blocks`,
    and HunyuanVideo's `single_transformer_blocks`), which is what gradient checkpointing wraps; for a module
    holding several DiTs (Wan 2.2 A14B's experts), those of each."""
    # (heavy to import: loaded where used)
    from diffusers import ModelMixin

    dits = [m for m in model.modules() if isinstance(m, ModelMixin)] or [model]
    return [b for dit in dits for m in dit.children() if isinstance(m, nn.ModuleList) for b in m]


class _FlashLikeAttention(torch.autograd.Function):
    """Meta-device stand-in for a fused attention kernel: keeps q, k, v, out and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):  # type: ignore[override]
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]  # pragma: no cover - never run (meta estimate only)
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def flash_attention_on_meta() -> Iterator[None]:
    real = torch.nn.functional.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        names = ("query", "key", "value")
        q, k, v = (args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names))
        if q.device.type != "meta":
            return real(*args, **kwargs)
        return _FlashLikeAttention.apply(q, k, v)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = real


def _bytes_on(module: nn.Module | None, device: torch.device) -> int:
    """The bytes of `module`'s parameters and buffers on `device`'s type (a sharded one: this process's shard)."""
    if module is None:
        return 0
    tensors = [local(t) for t in (*module.parameters(), *module.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == device.type)


def tokens_per_sample(transformer: torch.nn.Module, latent_shape: tuple[int, ...]) -> int:
    """DiT tokens of one latent (C, f, h, w), from the transformer's patch sizes (all diffusers video DiTs
    name them patch_size and, where separate, patch_size_t)."""
    cfg = transformer.config
    p = cfg.get("patch_size", 1)
    if isinstance(p, (list, tuple)):
        pt, ph, pw = p
    else:
        pt, ph, pw = cfg.get("patch_size_t") or 1, p, p
    _, f, h, w = latent_shape
    return -(-f // pt) * (h // ph) * (w // pw)


def meta_diffusers(transformer: nn.Module) -> nn.Module:
    """A diffusers DiT's class and config on the meta device, in its dtype (`Backbone.meta_transformer` of the
    diffusers families and the toy model)."""
    dtype = next(transformer.parameters()).dtype
    with torch.device("meta"):
        return type(transformer).from_config(transformer.config).to(dtype)


def meta_copy(backbone, spec: L.LoraSpec | None) -> nn.Module:
    """The backbone's DiT (class and config) on the meta device, with the same LoRA layers (none without
    `spec`): `Backbone.meta_transformer`, which a module of several DiTs builds its own way."""
    transformer = backbone.transformer
    meta = backbone.meta_transformer()
    # Each parameter in the real one's dtype: a bf16 diffusers DiT keeps some modules in fp32
    # (`_keep_in_fp32_modules`), so a copy cast to one dtype would not run like it (or at all).
    real = {n.replace(".base.", "."): p.dtype for n, p in transformer.named_parameters()}
    for name, param in meta.named_parameters():
        dtype = real.get(name)
        if dtype in (torch.float32, torch.bfloat16, torch.float16) and param.dtype != dtype:
            param.data = param.data.to(dtype)
    if spec is not None:
        L.inject(meta, spec)
    return meta


def meta_inputs(
    backbone, micro_batch: int, latent_shape: tuple[int, ...], prompt: PromptEmbeds
) -> tuple[torch.Tensor, torch.Tensor, PromptEmbeds]:
    """(noisy latents, sigmas, prompt) of a micro-batch on the meta device, for `predict` on a meta copy."""
    meta_dev = torch.device("meta")
    noisy = torch.empty((micro_batch, *latent_shape), device=meta_dev, dtype=backbone.dtype)
    sigmas = torch.full((micro_batch,), 0.5)  # real and tiny: some backbones index schedules with it
    embeds = torch.empty((micro_batch, *prompt.embeds.shape[1:]), device=meta_dev, dtype=prompt.embeds.dtype)
    mask = torch.ones((micro_batch, *prompt.mask.shape[1:]), device=meta_dev, dtype=torch.bool)
    pooled = prompt.pooled
    if pooled is not None:
        pooled = torch.empty((micro_batch, *pooled.shape[1:]), device=meta_dev, dtype=pooled.dtype)
    return noisy, sigmas, PromptEmbeds(embeds, mask, pooled)


@contextlib.contextmanager
def running_on_meta(
    backbone,
    meta: nn.Module,
    what: str,
    fix: str = "set train.memory_check=false to train without the estimate",
) -> Iterator[None]:
    """`backbone.predict` runs `meta` (a `meta_copy`) on the meta device inside the block; a backbone whose
    forward needs real data fails with a message naming what could not be done."""
    real, device = backbone.transformer, backbone.device
    try:
        backbone.transformer, backbone.device = meta, torch.device("meta")
        with flash_attention_on_meta():
            yield
    except SetseqError:
        raise
    except Exception as e:  # a backbone whose forward needs real data: say so, do not guess
        raise SetseqError(
            f"could not {what} for the {backbone.info.name} backbone ({type(e).__name__}: {e})", fix
        ) from e
    finally:
        backbone.transformer, backbone.device = real, device


def estimate_training_memory(
    backbone,
    spec: L.LoraSpec,
    latent_shape: tuple[int, ...],
    prompt: PromptEmbeds,
    *,
    micro_batch: int,
    stage: int,
    dropconnect: float,
    gradient_checkpointing: bool,
    self_conditioning: bool = False,
    engine: Engine = Engine(),
) -> MemoryEstimate:
    """Estimate the peak bytes of one training step of `stage` at `micro_batch` samples of `latent_shape`
    (C, f, h, w), with the prompt embeddings of one sample. `engine`: how FSDP2 holds the DiT, if it does.
    Nothing of this touches the real weights."""
    device = backbone.device
    real = backbone.transformer
    meta = meta_copy(backbone, spec)
    L.set_stage(meta, stage, dropconnect=dropconnect)  # type: ignore[arg-type]
    meta.train()
    lora_params = [p for layer in L.get_layers(meta).values() for p in (layer.down, layer.up, layer.motion)]
    trainable = sum(p.numel() for p in lora_params if p.requires_grad)
    lora_bytes = 4 * sum(p.numel() for p in lora_params) + 4 * 3 * trainable  # params + grad + 2 moments

    trace = _trace_saved_tensors(backbone, meta, micro_batch, latent_shape, prompt, self_conditioning)
    activations, per_block = trace.saved, trace.per_block
    block_max = max((b for b, _ in per_block), default=0)
    if gradient_checkpointing and per_block:
        activations = activations - sum(b for b, _ in per_block) + sum(n for _, n in per_block)
    # Backward works through one block at a time: its activations' gradients (and, under checkpointing, the
    # block's activations rebuilt by the recompute) live beside the kept ones.
    transient = (2 if gradient_checkpointing else 1) * block_max + trace.largest
    transient += _weights_in_flight(backbone, engine)
    weights = sum(_bytes_on(module, device) for module in (backbone.text_encoder, backbone.vae)) + _bytes_on(
        real, device
    )
    # The real DiT's bytes include its fp32 LoRA parameters when it already carries them; those are counted in
    # lora_bytes, so take them out here.
    weights -= 4 * sum(
        p.numel() for lay in L.get_layers(real).values() for p in (lay.down, lay.up, lay.motion)
    )
    tokens = micro_batch * tokens_per_sample(real, latent_shape)
    return MemoryEstimate(tokens, weights, lora_bytes, activations, transient)


def _weights_in_flight(backbone, engine: Engine) -> int:
    """Base weights that exist whole on the device only while their layer or block runs: a block-swapped
    linear's copy, or FSDP2's gathered blocks."""
    real, device = backbone.transformer, backbone.device
    # Block swap (setseq.offload): a host-resident linear weight is copied to the device (and upcast from fp8)
    # inside its op, one layer at a time.
    host = [
        m.weight
        for m in real.modules()
        if isinstance(m, nn.Linear) and device.type != "cpu" and m.weight.device.type == "cpu"
    ]
    swapped = max((w.numel() * (w.element_size() + backbone.dtype.itemsize) for w in host), default=0)
    # FSDP2 (model.fsdp; model.fsdp_offload): each process holds 1/P of every weight (`_bytes_on` counts its
    # shards; offloaded ones are in host memory and not counted); a block's whole weights exist while it runs,
    # and the blocks prefetched beside it (`fsdp_gathered` units at once). Units inside another unit are the
    # blocks; a root (the DiT, or each expert of Wan 2.2 A14B) keeps its own weights (embedders, heads, norms)
    # whole through its forward and backward. Only FSDP2's parameters (DTensors): offload leaves the LoRA out.
    fsdp = [m for m in real.modules() if isinstance(m, FSDPModule)]
    inner = {id(c) for m in fsdp for c in list(m.modules())[1:]}
    units = [m for m in fsdp if id(m) in inner]
    in_units = {id(p) for u in units for p in u.parameters()}
    # Gathered in the MixedPrecisionPolicy's param dtype when one is set, else as stored (fp8 base weights: 1
    # byte each).
    cast = engine.param_dtype

    def whole_bytes(params) -> int:
        return sum(
            p.numel() * (cast.itemsize if cast else p.element_size())
            for p in params
            if isinstance(p, DTensor)
        )

    gathered = engine.gathered * max((whole_bytes(u.parameters()) for u in units), default=0)
    for root in (m for m in fsdp if id(m) not in inner):
        gathered += whole_bytes(p for p in root.parameters() if id(p) not in in_units)
    return swapped + gathered


@dataclass
class _SavedTensors:
    saved: int  # bytes autograd keeps for backward (each storage once)
    largest: int  # the largest of them
    per_block: list[tuple[int, int]]  # (saved bytes, input bytes) of each DiT block


def _trace_saved_tensors(
    backbone,
    meta: nn.Module,
    micro_batch: int,
    latent_shape: tuple[int, ...],
    prompt,
    self_conditioning: bool,
) -> _SavedTensors:
    """One forward of the meta copy `meta` (in place of the real DiT), counting what autograd saves, in all
    and per block."""
    saved: dict[int, torch.Tensor] = {}
    counter = {"bytes": 0}
    largest = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in saved:
            saved[key] = t
            nbytes = t.untyped_storage().nbytes()
            counter["bytes"] += nbytes
            largest["bytes"] = max(largest["bytes"], nbytes)
        return t

    per_block: list[tuple[int, int]] = []  # (saved bytes, input bytes) of each DiT block
    open_blocks: dict[int, tuple[int, int]] = {}

    def pre(block: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        open_blocks[id(block)] = (counter["bytes"], x.numel() * x.element_size())

    def post(block: nn.Module, _args: tuple, _kwargs: dict, _out: object) -> None:
        start, n_in = open_blocks.pop(id(block))
        per_block.append((counter["bytes"] - start, n_in))

    blocks = transformer_blocks(meta)
    hooks = []
    for block in blocks:
        hooks.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(block.register_forward_hook(post, with_kwargs=True))

    noisy, sigmas, meta_prompt = meta_inputs(backbone, micro_batch, latent_shape, prompt)
    extras = {"self_cond": torch.empty_like(noisy)} if self_conditioning else {}
    try:
        with running_on_meta(backbone, meta, "estimate memory"):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                L.draw_masks(meta, None)
                backbone.predict(noisy, sigmas, meta_prompt, **extras)
    finally:
        for h in hooks:
            h.remove()

    return _SavedTensors(counter["bytes"], largest["bytes"], per_block)


def device_memory(device: torch.device) -> int:
    """Bytes the training device has: the GPU's total memory, or the machine's physical memory on CPU.
    `SETSEQ_DEVICE_MEMORY_GB` overrides it (to plan for a smaller card)."""
    override = os.environ.get("SETSEQ_DEVICE_MEMORY_GB")
    if override:
        return int(float(override) * GiB)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class PeakMemory(TorchDispatchMode):
    """Measured peak of the tensor storages created inside the `with` block (any device but meta), in
    bytes: each new storage counts from the op that made it until it is freed. Tensors that existed before
    (weights) are not counted; add them. Used by the tests and benchmarks to check `estimate_training_memory`."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out
