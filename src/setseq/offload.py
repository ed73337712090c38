"""Block swap: the frozen linear weights of the DiT's last N blocks live in host memory and are streamed to the
device inside each linear's op, in forward and again in backward (`model.block_swap=N`).

For a 14B DiT on a card smaller than its weights. Every `nn.Linear` of a swapped block (the LoRA-targeted ones
and the others) becomes a `StreamedLinear` and runs through `lora.FusedLinear`, which copies the host weight to
the device (and upcasts an fp8 one) inside its forward and backward and saves only the host tensor for
backward: the device holds one layer's weight at a time, never a block's, and nothing of it is kept between
forward and backward. Gradient checkpointing recomputes through the same op. The rest of each block (norms,
biases, modulation tables, the LoRA parameters) and every other block stay on the device.

The cost is the copies: each swapped weight crosses the bus twice per step (forward, backward; three times
with gradient checkpointing), synchronously on the compute stream from pinned memory. There is no prefetch
overlap yet, so a swapped block runs at bus speed: swap the fewest blocks that fit (the memory check names N).

Loading: with block swap the pipeline is loaded to the CPU, `stream_blocks` marks the swapped linears, and
`place` moves everything but their weights to the device, so the whole model is never on the device at once.
LoRA injected afterwards wraps a `StreamedLinear` like any linear and puts its own parameters on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from setseq import lora as L
from setseq.errors import SetseqError
from setseq.memory import transformer_blocks

HOST = torch.device("cpu")


class StreamedLinear(L.HostLinear):
    """A frozen `nn.Linear` whose weight stays on the host, applied through `lora.FusedLinear`, which copies it
    to the input's device inside the op. Same parameters and module name as the linear it replaces, so LoRA
    targets, state dicts and exports see an ordinary linear; a `SetSeqLinear` injected on it keeps it as base."""

    @classmethod
    def take_over(cls, linear: nn.Linear, device: torch.device) -> StreamedLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.compute_device = device  # where its inputs and an injected LoRA's parameters live
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return L.FusedLinear.apply(x, self.weight, self.bias, None, None, None)


@dataclass
class SwapPlan:
    """What `stream_blocks` did: blocks swapped (per DiT), the weights kept on the host, and their bytes."""

    blocks: int
    weights: list[nn.Parameter]
    host_bytes: int


def dits(transformer: nn.Module) -> list[nn.Module]:
    """The DiTs in `transformer`: itself, or each expert of Wan 2.2 A14B (modules that hold the blocks)."""
    # (heavy to import: loaded where used)
    from diffusers import ModelMixin

    return [
        m
        for m in transformer.modules()
        if isinstance(m, ModelMixin) and any(isinstance(c, nn.ModuleList) for c in m.children())
    ] or [transformer]


def max_blocks(transformer: nn.Module) -> int:
    """The most blocks `model.block_swap` can take (the block count of the smallest DiT)."""
    return min(len(transformer_blocks(d)) for d in dits(transformer))


def device_linear_bytes(transformer: nn.Module, n: int, device: torch.device) -> int:
    """What swapping the last `n` blocks of each DiT saves on `device`: the bytes of their linear weights there,
    less the device copy of the largest one (and its upcast) that the streaming op makes."""
    weights = [
        m.weight
        for b in swappable_blocks(transformer, n)
        for m in b.modules()
        if isinstance(m, nn.Linear) and m.weight.device.type == device.type
    ]
    copy = max((2 * w.numel() * max(w.element_size(), 2) for w in weights), default=0)
    return max(sum(w.numel() * w.element_size() for w in weights) - copy, 0)


def swappable_blocks(transformer: nn.Module, n: int) -> list[nn.Module]:
    """The last `n` blocks of each DiT in `transformer` (both experts of Wan 2.2 A14B)."""
    out: list[nn.Module] = []
    for dit in dits(transformer):
        blocks = transformer_blocks(dit)
        if n < 0 or n > len(blocks):
            raise SetseqError(
                f"model.block_swap={n} but the DiT has {len(blocks)} blocks",
                f"set model.block_swap between 0 and {len(blocks)}",
            )
        out += blocks[len(blocks) - n :]
    return out


def replace_linears(blocks: list[nn.Module], make) -> list[nn.Module]:
    """Replace every plain `nn.Linear` inside `blocks` by `make(linear)` (same module name); returns the new
    modules. Block swap uses it."""
    new_layers: list[nn.Module] = []
    for block in blocks:
        for name, mod in list(block.named_modules()):
            if type(mod) is nn.Linear:
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                new = make(mod)
                setattr(parent, child, new)
                new_layers.append(new)
    return new_layers


def stream_blocks(transformer: nn.Module, n: int, device: torch.device) -> SwapPlan:
    """Swap the last `n` blocks (of each DiT): every plain linear in them becomes a `StreamedLinear` whose
    weight stays in host memory. Call on a model loaded on the host, before `place` and before LoRA injection."""
    layers = replace_linears(swappable_blocks(transformer, n), lambda m: StreamedLinear.take_over(m, device))
    weights = [m.weight for m in layers]
    for w in weights:
        w.requires_grad_(False)
        w.data = w.data.to(HOST)
    return SwapPlan(n, weights, sum(w.numel() * w.element_size() for w in weights))


def place(backbone, device: torch.device, plan: SwapPlan | None) -> None:
    """Move every module of `backbone` (DiT, text encoder, VAE) to `device`, except the swapped weights, which
    stay on the host (pinned when the device is a GPU, for the copies)."""
    weights = plan.weights if plan is not None else []
    keep = {id(w) for w in weights}
    roots = {id(m): m for m in vars(backbone).values() if isinstance(m, nn.Module)}
    moved: dict[int, nn.Parameter] = {}  # old id -> new parameter, so tied weights stay tied
    for root in roots.values():
        for mod in root.modules():
            for name, p in mod._parameters.items():
                if p is None or id(p) in keep or p.device == device:
                    continue
                if id(p) not in moved:
                    data = p.data.to(device)
                    if torch._has_compatible_shallow_copy_type(p, data):  # as nn.Module.to does
                        p.data = data
                        moved[id(p)] = p
                    else:  # e.g. to the meta device: a new parameter
                        moved[id(p)] = nn.Parameter(data, requires_grad=p.requires_grad)
                mod._parameters[name] = moved[id(p)]
            for name, b in mod._buffers.items():
                if b is not None and b.device != device:
                    mod._buffers[name] = b.to(device)
    if device.type == "cuda":
        for w in weights:
            w.data = w.data.pin_memory()
    backbone.device = device


def place_around_dit(backbone, device: torch.device) -> None:
    """Move every module of `backbone` but its DiT (text encoder, VAE) to `device`; the DiT stays where it is
    (on the host, until FSDP2 moves each process's shard of it: the whole DiT is never on the device)."""
    for mod in {id(v): v for v in vars(backbone).values() if isinstance(v, nn.Module)}.values():
        if mod is not backbone.transformer:
            mod.to(device)
    backbone.device = device


def load_backbone_swapped(
    name: str, model_id: str, device: torch.device, dtype: torch.dtype, block_swap: int
):
    """`load_backbone`, with the last `block_swap` blocks' linear weights left in host memory (0: plain)."""
    # (here, not at the top: the registry imports the families, whose shared base imports this module)
    from setseq.backbones.registry import load_backbone

    if not block_swap:
        return load_backbone(name, model_id, device, dtype)
    return swap_and_place(load_backbone(name, model_id, HOST, dtype), block_swap, device)


def swap_and_place(backbone, block_swap: int, device: torch.device):
    """`stream_blocks` on a backbone built on the host, then `place` the rest on `device`; returns it."""
    place(backbone, device, stream_blocks(backbone.transformer, block_swap, device))
    return backbone
