"""fp8 storage of the frozen weights: setseq's own (`model.fp8`) against torchao's and diffusers' (issue #19).

The issue asks to use torchao's float8 or diffusers' layerwise casting "if either fits, instead of our own".
For one frozen linear of a Wan-size DiT (weights drawn like a trained one's, std 0.02) inside a LoRA training
step, each way is measured on what training needs:

- error of the output and of the input gradient against the bfloat16 linear (relative Frobenius norm);
- bytes held for the weight, and bytes autograd keeps for backward beyond the module's own tensors and the
  input (a bf16 copy of the weight kept for backward defeats fp8 in training);
- whether FSDP2 (`fully_shard`, 2 gloo processes) can shard it (`model.fsdp` with `model.fp8`).

    python benchmarks/fp8_storage.py                      # setseq's and diffusers'
    pip install torchao && python benchmarks/fp8_storage.py   # and torchao's Float8WeightOnlyConfig

Prints one table; the run's figures are recorded in BENCHMARKS.md with this command.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers.hooks import apply_layerwise_casting
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from setseq import lora as L

OUT, IN, TOKENS = 1536 * 4, 1536, 256  # Wan 1.3B's FFN up-projection; a few hundred tokens


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    lin = nn.Linear(IN, OUT)
    nn.init.normal_(lin.weight, std=0.02)
    return nn.Sequential(lin).to(torch.bfloat16).requires_grad_(False)


def setseq_fp8(m: nn.Module) -> nn.Module:
    """setseq's `model.fp8`: float8_e4m3fn with one scale per output row, upcast inside the fused op."""
    L.inject(m, L.LoraSpec(4, 4.0, "down", (r"^0$",), fp8=True))
    return m


def diffusers_layerwise(m: nn.Module) -> nn.Module:
    """diffusers' layerwise casting: the weight stored as float8_e4m3fn (no scale), cast to bf16 per forward."""
    apply_layerwise_casting(m, storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    return m


def torchao_weight_only(m: nn.Module) -> nn.Module:
    """torchao's `Float8WeightOnlyConfig`: a Float8Tensor weight (float8 with per-row scales)."""
    from torchao.quantization import Float8WeightOnlyConfig, quantize_  # (torchao: optional, this row only)

    quantize_(m, Float8WeightOnlyConfig())
    return m


WAYS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "bf16 (reference)": lambda m: m,
    "setseq model.fp8": setseq_fp8,
    "diffusers layerwise casting": diffusers_layerwise,
    "torchao Float8WeightOnly": torchao_weight_only,
}


def _inner(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors behind `t` (a tensor subclass such as torchao's Float8Tensor holds several)."""
    if type(t) in (torch.Tensor, nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return [t]
    return [getattr(t, n) for n in t.__tensor_flatten__()[0]]


def _held_bytes(m: nn.Module) -> int:
    """Bytes of the module's parameters and buffers."""
    return sum(i.numel() * i.element_size() for t in (*m.parameters(), *m.buffers()) for i in _inner(t))


def _storages(tensors) -> set[int]:
    """Data pointers of the storages behind the tensors."""
    return {i.untyped_storage().data_ptr() for t in tensors for i in _inner(t)}


def _step(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Output, input gradient, and the bytes autograd saved for backward beyond what is alive anyway (the
    module's own parameters and buffers, and the input): copies made for backward, such as an upcast weight."""
    saved: list[int] = []
    x = x.detach().clone().requires_grad_(True)
    alive = _storages([*m.parameters(), *m.buffers(), x])

    def pack(t: torch.Tensor):
        if not (_storages([t]) & alive):
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    y.float().square().mean().backward()
    return y.detach().float(), x.grad.float(), sum(saved)


def _shards(rank: int, world: int, port: int, way: str, result) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = WAYS[way](_linear())
        fully_shard(m, mesh=init_device_mesh("cpu", (world,)))
        x = torch.randn(2, IN, dtype=torch.bfloat16, requires_grad=True)
        m(x).float().sum().backward()
        if rank == 0:
            result.put("yes")
    except Exception as e:  # reported, not raised: the table says why it does not fit
        if rank == 0:
            result.put(f"no ({type(e).__name__}: {str(e).splitlines()[0][:90]})")
    finally:
        dist.destroy_process_group()


def fsdp2_fits(way: str) -> str:
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_shards, args=(r, 2, port, way, result)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return result.get() if not result.empty() else "no (the processes did not finish)"


def main() -> None:
    x = torch.randn(TOKENS, IN, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    ref_y, ref_g, _ = _step(_linear(), x)
    print(
        f"one frozen linear {OUT}x{IN} (std 0.02), {TOKENS} tokens, bf16 compute; torch {torch.__version__}"
    )
    print(
        "| way | output error | input-grad error | weight MiB | extra kept for backward MiB | FSDP2 shards it |"
    )
    print("|---|---|---|---|---|---|")
    for way, make in WAYS.items():
        try:
            m = make(_linear())
        except ImportError as e:
            print(f"| {way} | not installed ({e.name}) | | | | |")
            continue
        y, g, saved = _step(m, x)
        err_y = float((y - ref_y).norm() / ref_y.norm())
        err_g = float((g - ref_g).norm() / ref_g.norm())
        mib = 2.0**20
        print(
            f"| {way} | {err_y:.4f} | {err_g:.4f} | {_held_bytes(m) / mib:.1f} | {saved / mib:.1f} | "
            f"{fsdp2_fits(way)} |"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
