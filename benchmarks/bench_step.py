"""Training-step speed and peak memory of setseq's layer vs a peft LoRA of the same rank vs a full fine-tune.

All variants run in one invocation, each in its own subprocess (so peak RSS / CUDA peak is its own), on the
same small WanTransformer3DModel built from config with random weights, the same inputs and AdamW.
Figures are compared as ratios to the peft LoRA step.

    python benchmarks/bench_step.py                 # CPU, small config
    python benchmarks/bench_step.py --device cuda --dtype bfloat16 --layers 8 --dim-heads 12 --size 60x104
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch

TARGETS = (
    r"^blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$",
    r"^blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0)$",
    r"^blocks\.\d+\.ffn\.net\.(0\.proj|2)$",
)


def build(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    heads, head_dim = args.heads, args.head_dim
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=64,
        freq_dim=64,
        ffn_dim=heads * head_dim * 4,
        num_layers=args.layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def worker(variant: str, args_dict: dict, q) -> None:
    args = argparse.Namespace(**args_dict)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model = build(args).to(dev, dtype)
    h, w = args.latent_hw
    frames = 1 if variant.endswith("stage1") else args.latent_frames
    if variant.startswith("setseq"):
        from setseq import lora as L

        L.inject(model, L.LoraSpec(args.rank, args.rank, "down", TARGETS))
        params = L.set_stage(
            model, 1 if variant.endswith("stage1") else 2, 0.8 if variant.endswith("stage1") else 0.5
        )
        for layer in L.get_layers(model).values():  # stage 2 starts from a trained identity
            layer.up.data.normal_(std=0.01)
    elif variant.startswith("peft"):
        from peft import LoraConfig, inject_adapter_in_model

        model.requires_grad_(False)
        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        import re

        targets = [n for n in names if any(re.search(p, n) for p in TARGETS)]
        model = inject_adapter_in_model(
            LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=targets, lora_dropout=0.0), model
        )
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
    else:  # full fine-tune
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 16, frames, h, w, generator=g).to(dev, dtype)
    t = torch.rand(args.batch, generator=g).mul(1000).to(dev)
    text = torch.randn(args.batch, 32, 64, generator=g).to(dev, dtype)
    target = torch.randn(x.shape, generator=g).to(dev, dtype)
    model.train()
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(out.float(), target.float())
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    n_train = sum(p.numel() for p in params)
    q.put(
        {
            "variant": variant,
            "median_s": statistics.median(times),
            "peak_mib": peak,
            "trainable": n_train,
            "tokens": frames * (h // 2) * (w // 2) * args.batch,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--latent-frames", type=int, default=3, help="stage-2 latent frames (3 = 9 video frames)")
    ap.add_argument("--latent-hw", type=lambda s: tuple(int(v) for v in s.split("x")), default=(16, 16))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for variant in (
        "setseq-stage1",
        "peft-stage1",
        "full-stage1",
        "setseq-stage2",
        "peft-stage2",
        "full-stage2",
    ):
        q = ctx.Queue()
        p = ctx.Process(target=worker, args=(variant, vars(args), q))
        p.start()
        results.append(q.get())
        p.join()
    print(f"config: {vars(args)}")
    print(
        f"{'variant':16s} {'step s':>8s} {'vs peft':>8s} {'vs full':>8s} {'peak MiB':>9s} {'trainable':>10s} {'tokens':>7s}"
    )
    by = {r["variant"]: r for r in results}
    for r in results:
        stage = r["variant"].split("-")[1]
        peft, full = by[f"peft-{stage}"]["median_s"], by[f"full-{stage}"]["median_s"]
        print(
            f"{r['variant']:16s} {r['median_s']:8.4f} {r['median_s'] / peft:8.2f} {r['median_s'] / full:8.2f} "
            f"{r['peak_mib']:9.0f} {r['trainable']:10d} {r['tokens']:7d}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
