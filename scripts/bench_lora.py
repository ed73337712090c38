"""Time the LoRA layer's two paths against peft and against the frozen layer alone, in one run.

    python scripts/bench_lora.py                      # CPU defaults: width 512, 4096 tokens, rank 16 / 64
    python scripts/bench_lora.py --device cuda --dtype bfloat16 --width 1536 --tokens 14040 --ranks 32 128

For each rank, one `nn.Linear(width, width)` with a LoRA, a forward + backward over `tokens` tokens (the input
requires grad, as inside a DiT whose earlier layers carry LoRAs) in:
- floor: the frozen layer alone (no LoRA), forward + backward to the input: what no LoRA can beat;
- peft: peft's LoRA layer (per-token, its own dropout off);
- per_token: setseq's `SetSeqLinear`, lora.path=per_token;
- fused: setseq's `SetSeqLinear`, lora.path=fused (one matmul with W + U D, custom backward);
for stage 1 (basis and coefficients trained) and stage 2 (the residual only), and inference (no grad).
Prints median milliseconds and ratios to the floor and to peft. Figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from setseq import lora as L


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return p.parse_args()


def timed(fn, repeats: int, device: str) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    dev = args.device
    print(
        f"torch {torch.__version__}, {dev}, {args.dtype}, threads {torch.get_num_threads()}, "
        f"Linear({args.width}, {args.width}), {args.tokens} tokens"
    )
    x0 = torch.randn(1, args.tokens, args.width, device=dev, dtype=dtype)
    for rank in args.ranks:
        rows: dict[str, float] = {}

        def fwd_bwd(module: nn.Module):
            x = x0.detach().requires_grad_(True)

            def run() -> None:
                module.zero_grad(set_to_none=True)
                x.grad = None
                module(x).float().square().mean().backward()

            return run

        def infer(module: nn.Module):
            def run() -> None:
                with torch.no_grad():
                    module(x0)

            return run

        base = nn.Linear(args.width, args.width).to(dev, dtype).requires_grad_(False)
        rows["floor (frozen layer) train"] = timed(fwd_bwd(base), args.repeats, dev)
        rows["floor (frozen layer) infer"] = timed(infer(base), args.repeats, dev)

        from peft import LoraConfig, inject_adapter_in_model  # (peft: a dev-only dependency, this row only)

        holder = nn.Sequential(nn.Linear(args.width, args.width)).to(dev, dtype)
        holder.requires_grad_(False)
        holder = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=["0"]), holder)
        for n, p in holder.named_parameters():
            p.requires_grad_("lora_" in n)
            if "lora_B" in n:
                nn.init.normal_(p, std=0.01)
        rows["peft train (A, B)"] = timed(fwd_bwd(holder), args.repeats, dev)
        rows["peft infer"] = timed(infer(holder), args.repeats, dev)

        for path in ("per_token", "fused"):
            m = nn.Sequential(nn.Linear(args.width, args.width)).to(dev, dtype)
            layers = L.inject(m, L.LoraSpec(rank, float(rank), "down", (r"^0$",), path))  # type: ignore[arg-type]
            for layer in layers.values():
                nn.init.normal_(layer.up, std=0.01)
            m.train()
            for stage, p_drop in ((1, 0.8), (2, 0.5)):
                L.set_stage(m, stage, dropconnect=p_drop)  # type: ignore[arg-type]
                L.draw_masks(m, torch.Generator(device=dev).manual_seed(0))
                rows[f"{path} train stage {stage}"] = timed(fwd_bwd(m), args.repeats, dev)
            L.set_stage(m, 0)
            m.eval()
            rows[f"{path} infer"] = timed(infer(m), args.repeats, dev)

        floor_t, floor_i = rows["floor (frozen layer) train"], rows["floor (frozen layer) infer"]
        peft_t, peft_i = rows["peft train (A, B)"], rows["peft infer"]
        print(f"\nrank {rank}")
        print(f"  {'':34s} {'ms':>8s} {'x floor':>8s} {'x peft':>8s}")
        for name, ms in rows.items():
            infer_row = name.endswith("infer")
            fl, pe = (floor_i, peft_i) if infer_row else (floor_t, peft_t)
            print(f"  {name:34s} {ms:8.2f} {ms / fl:8.2f} {ms / pe:8.2f}")


if __name__ == "__main__":
    main()
