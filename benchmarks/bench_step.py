"""Training-step speed and peak memory of setseq's layer vs a peft LoRA of the same rank vs a full fine-tune,
each against the floor: the frozen model's forward plus its input-gradient backward, with no LoRA at all.

Every variant runs in its own spawned process (so its peak RSS / CUDA peak is its own), on the same small
WanTransformer3DModel built from config with random weights, the same inputs and AdamW. The processes of a
stage are alive together and take turns: round after round, each runs `--steps` steps while the others wait
(in a rotated order), so a drift in the machine's speed hits every variant alike. A variant's ratio to the
floor (and to peft, and to the full fine-tune) is taken round by round from the rounds' median steps; the
table gives the median ratio over the rounds and their spread (min-max).

    python benchmarks/bench_step.py --threads 1     # CPU, small config
    python benchmarks/bench_step.py --threads 1 --clock cpu   # the same on a CPU shared with other work
    python benchmarks/bench_step.py --device cuda --dtype bfloat16 --layers 8 --heads 12 --latent-hw 60x104

"FLOP x floor" counts every matmul and attention of one step with torch's FlopCounterMode: the LoRA's own
products and the weight gradients are work the floor does not do, so a variant's step cannot come closer to
the floor than its FLOP ratio unless the rest of the step (norms, activations, attention's softmax) hides it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import resource
import statistics
import time

import torch
from diffusers import WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

from setseq import lora as L

TARGETS = (
    r"^blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$",
    r"^blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0)$",
    r"^blocks\.\d+\.ffn\.net\.(0\.proj|2)$",
)
VARIANTS = ("floor", "setseq", "peft", "full")


def build(args):
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


def trainable(model, variant: str, stage: int, rank: int) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The model with the variant's adapter (none for floor and full) and its trainable parameters."""
    model.requires_grad_(False)
    if variant == "setseq":
        L.inject(model, L.LoraSpec(rank, rank, "down", TARGETS))
        params = L.set_stage(model, stage, 0.8 if stage == 1 else 0.5)  # type: ignore[arg-type]
        for layer in L.get_layers(model).values():  # stage 2 starts from a trained identity
            layer.up.data.normal_(std=0.01)
        return model, params
    if variant == "peft":
        from peft import LoraConfig, inject_adapter_in_model  # (peft: a dev-only dependency, this row only)

        names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        targets = [n for n in names if any(re.search(p, n) for p in TARGETS)]
        model = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0), model
        )
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        return model, [p.requires_grad_(True) for p in params]
    if variant == "full":
        return model, [p.requires_grad_(True) for p in model.parameters()]
    return model, []  # floor: nothing trained; the input gets the gradient


def _addmm_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def worker(variant: str, stage: int, args_dict: dict, conn) -> None:
    """Build the variant, then run the steps the parent asks for and send back their times (a list of
    seconds); on None send the peak memory (MiB), the trainable count, the tokens and one step's FLOPs."""
    args = argparse.Namespace(**args_dict)
    torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, params = trainable(build(args).to(dev, dtype), variant, stage, args.rank)
    h, w = args.latent_hw
    frames = 1 if stage == 1 else args.latent_frames
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 16, frames, h, w, generator=g).to(dev, dtype)
    x.requires_grad_(variant == "floor")
    t = torch.rand(args.batch, generator=g).mul(1000).to(dev)
    text = torch.randn(args.batch, 32, 64, generator=g).to(dev, dtype)
    target = torch.randn(x.shape, generator=g).to(dev, dtype)
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    mask_gen = torch.Generator().manual_seed(1)
    model.train()

    def step() -> None:
        if variant == "setseq":  # a fresh DropConnect mask every step, as training draws it
            L.draw_masks(model, mask_gen)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        x.grad = None
        out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        torch.nn.functional.mse_loss(out.float(), target.float()).backward()
        if opt is not None:
            opt.step()

    # CPU time of this process: with --threads 1 it is what the step costs, not how long it waited for a core
    # that other work on a shared machine held (wall time counts both).
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    while (n := conn.recv()) is not None:
        times = []
        for _ in range(n):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(clock() - t0)
        conn.send(times)

    # torch counts addmm but not its in-place form, which setseq's per-token op accumulates with
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops}) as counter:
        step()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    conn.send(
        {
            "peak_mib": peak,
            "trainable": sum(p.numel() for p in params),
            "tokens": frames * (h // 2) * (w // 2) * args.batch,
            "flops": counter.get_total_flops(),
        }
    )


def run_stage(stage: int, args) -> dict[str, dict]:
    """All variants of one stage in turns (see the module docstring); {variant: figures}."""
    ctx = mp.get_context("spawn")
    pipes = {}
    procs = []
    for v in VARIANTS:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=worker, args=(v, stage, vars(args), child), daemon=True)
        p.start()
        pipes[v], procs = parent, [*procs, p]
    for v in VARIANTS:  # warm-up, one after the other
        pipes[v].send(args.warmup)
        pipes[v].recv()
    rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    steps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for v in order:
            pipes[v].send(args.steps)
            times = pipes[v].recv()
            rounds[v].append(statistics.median(times))
            steps[v] += times
    out = {}
    for v in VARIANTS:
        pipes[v].send(None)
        out[v] = pipes[v].recv() | {"median_s": statistics.median(steps[v]), "rounds_s": rounds[v]}
    for p in procs:
        p.join()
    return out


def ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, min and max over the rounds of a / b, round by round."""
    r = [x / y for x, y in zip(a, b)]
    return statistics.median(r), min(r), max(r)


def report(stage: int, res: dict[str, dict]) -> list[str]:
    lines = []
    for v in VARIANTS:
        cols = [f"{v} stage {stage}", f"{res[v]['median_s']:.4f}"]
        for ref in ("floor", "peft", "full"):
            m, lo, hi = ratio(res[v]["rounds_s"], res[ref]["rounds_s"])
            cols.append(f"{m:.3f} ({lo:.2f}-{hi:.2f})" if v != ref else "1")
        cols += [
            f"{res[v]['flops'] / res['floor']['flops']:.2f}",
            f"{res[v]['peak_mib']:.0f}",
            f"{res[v]['trainable']:,}",
            str(res[v]["tokens"]),
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--latent-frames", type=int, default=3, help="stage-2 latent frames (3 = 9 video frames)")
    ap.add_argument("--latent-hw", type=lambda s: tuple(int(v) for v in s.split("x")), default=(16, 16))
    ap.add_argument("--steps", type=int, default=3, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time each step by its process's CPU time (CPU only; for a machine shared with other work)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu times CPU runs only; use the default wall clock on a GPU")
    results = {stage: run_stage(stage, args) for stage in args.stages}
    print(f"config: {vars(args)}")
    print(
        "| variant | step s | vs floor (min-max) | vs peft (min-max) | vs full (min-max) | FLOP x floor "
        "| peak MiB | trainable | tokens |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for stage, res in results.items():
        print("\n".join(report(stage, res)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
