"""Which LoRA path is faster for a layer shape and token count: the per-layer crossings behind `lora.path: auto`.

    python scripts/bench_lora_paths.py 128,128,16,128,1 512,512,32,512,1 128,128,16,1152,2

Each argument is `in,out,rank,tokens,stage` (stage 1: U and D trained, 2: the motion residual only, 0: no
gradient). For one `nn.Linear(in, out)` with a LoRA, forward + backward to the input (as inside a DiT whose
earlier layers carry LoRAs) in:
- floor: the frozen layer alone (what no LoRA can beat);
- peft: peft's LoRA layer (stage 1 only: peft has no motion residual);
- autograd: setseq's per-token product written as plain autograd ops, `W x + U (D x)` (its code before the
  custom op);
- per_token, fused: setseq's two custom ops; auto: what `lora.choose_path` picks, named.
The variants take turns, `--rounds` times, each timed by this process's CPU time (`--clock cpu`, for a machine
shared with other work; one thread) or wall time; the ratios are taken round by round and their median and
min-max printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from setseq import lora as L


class PlainPerToken(nn.Module):
    """The per-token product as plain autograd ops (setseq's code before `PerTokenLinear`)."""

    def __init__(self, layer: L.SetSeqLinear):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, d = self.layer.factors()
        y = self.layer.base(x)
        return y + F.linear(F.linear(x.to(d.dtype), d), u).to(y.dtype)


def variants(in_f: int, out_f: int, rank: int, stage: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    out: dict[str, nn.Module] = {"floor": nn.Linear(in_f, out_f).requires_grad_(False)}
    if stage == 1:
        from peft import LoraConfig, inject_adapter_in_model  # (peft: a dev-only dependency, this row only)

        holder = nn.Sequential(nn.Linear(in_f, out_f)).requires_grad_(False)
        holder = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["0"]), holder)
        for n, p in holder.named_parameters():
            p.requires_grad_("lora_" in n)
            if "lora_B" in n:
                nn.init.normal_(p, std=0.01)
        out["peft"] = holder
    for path in ("autograd", "per_token", "fused"):
        m = nn.Sequential(nn.Linear(in_f, out_f))
        spec = L.LoraSpec(rank, float(rank), "down", (r"^0$",), "per_token" if path == "autograd" else path)  # type: ignore[arg-type]
        layer = L.inject(m, spec)["0"]
        nn.init.normal_(layer.up, std=0.01)
        m.train(stage != 0)
        L.set_stage(m, stage, dropconnect=0.8 if stage == 1 else 0.2 if stage == 2 else 0.0)  # type: ignore[arg-type]
        L.draw_masks(m, torch.Generator().manual_seed(0))
        out[path] = PlainPerToken(layer) if path == "autograd" else m
    return out


def bench(spec: str, rounds: int, inner: int, clock) -> None:
    in_f, out_f, rank, tokens, stage = (int(v) for v in spec.split(","))
    mods = variants(in_f, out_f, rank, stage)
    x0 = torch.randn(8, max(1, tokens // 8), in_f)

    def run(m: nn.Module) -> None:
        if stage == 0:
            with torch.no_grad():
                m(x0)
            return
        x = x0.detach().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        m(x).sum().backward()

    times: dict[str, list[float]] = {k: [] for k in mods}
    for m in mods.values():
        for _ in range(3):
            run(m)
    for _ in range(rounds):
        for k, m in mods.items():
            t = clock()
            for _ in range(inner):
                run(m)
            times[k].append((clock() - t) / inner)
    need = dict(need_x=stage != 0, need_u=stage != 0, need_d=stage == 1)
    auto = L.choose_path(x0.shape[0] * x0.shape[1], in_f, out_f, rank, **need)
    line = f"{in_f}x{out_f} r{rank} {x0.shape[0] * x0.shape[1]} tokens stage {stage}: "
    line += f"floor {1e3 * statistics.median(times['floor']):.3f} ms"
    for k in mods:
        if k == "floor":
            continue
        for ref in ("floor", "peft"):
            if ref in mods and k != ref:
                r = [a / b for a, b in zip(times[k], times[ref])]
                line += f" | {k} {statistics.median(r):.2f} x {ref} ({min(r):.2f}-{max(r):.2f})"
    print(line + f" | auto: {auto}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shapes", nargs="+", help="in,out,rank,tokens,stage")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=5, help="forward + backward passes per variant per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for spec in args.shapes:
        bench(spec, args.rounds, args.inner, clock)


if __name__ == "__main__":
    main()
