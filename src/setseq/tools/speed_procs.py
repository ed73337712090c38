"""`setseq bench --shape NAME --procs P`: the speed bench's timed steps in P processes that torch's launcher
(`torch.distributed.run`, i.e. torchrun) starts, each reporting its own step time and memory.

Each process builds the same DiT (`setseq.tools.speed.build_backbone`; sharded, the processes other than 0 on the
meta device, to receive their shards of process 0's) and hands it to the training engine exactly as `setseq
train` does (`setseq.train.distributed.parallelize`): sharded by FSDP2 (`model.fsdp=true`, the default here),
or replicated with its LoRA gradients all-reduced (FSDP2's `replicate`, `--replicate`), optionally with fp8
base weights (`--fp8`, stored in fp8 and gathered in fp8 under FSDP2). Each process trains its own
micro-batch (the global batch is P times it), as data-parallel training does. `python -m setseq.tools.speed_procs
FOLDER` is one process; the settings travel in FOLDER/settings.json and each process's rows come back in
FOLDER/rank{N}.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from setseq import offload
from setseq.config import ModelConfig
from setseq.errors import SetseqError
from setseq.memory import tokens_per_sample
from setseq.runtime import quiet_libraries, visible_gpus
from setseq.tools.speed import (
    BenchSizes,
    build_backbone,
    latent_shape,
    random_prompt,
    shape_config,
    time_steps,
    with_lora,
)
from setseq.train.distributed import close_processes, init_processes, launched_world, parallelize


@dataclass
class ProcessStep:
    """One timed row of one process of `setseq bench --shape NAME --procs P`."""

    stage: int
    frames: int
    micro_batch: int  # samples per process and step
    tokens: int
    rank: int
    step_s: float
    peak_bytes: int
    held_bytes: int  # before the row's steps: the weights (1/P of the DiT's under FSDP2), the LoRA, ...


def held_bytes(device: torch.device) -> int:
    """What this process holds now: on CUDA the allocator's live tensors, on CPU its resident memory
    (/proc/self/statm; 0 where there is none)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _describe(
    name: str, procs: int, z: BenchSizes, rank: int, ckpt: bool, fp8: bool, replicate: bool, env: dict
) -> str:
    """The bench's first line: the shape, the processes and how the engine holds the DiT, the settings."""
    note = shape_config(name, z.layers)[0].note
    if procs == 1:
        engine = "one process, nothing sharded"
    elif replicate:
        engine = "the DiT replicated, LoRA gradients all-reduced (FSDP2's replicate)"
    else:
        engine = "the DiT sharded by FSDP2 (model.fsdp=true)"
    return (
        f"{name}: {note}" + (f"; built with {z.layers} layers" if z.layers else "") + f"; {procs} "
        f"process(es) on {z.device.type}, {engine}; {z.dtype}; LoRA rank {rank}; {z.height}x{z.width}; "
        f"gradient checkpointing {'on' if ckpt else 'off'}; fp8 {'on' if fp8 else 'off'}"
        + (f"; {env['OMP_NUM_THREADS']} thread(s) each" if z.device.type == "cpu" else "")
    )


def run_in_processes(
    name: str,
    procs: int,
    z: BenchSizes,
    *,
    rank: int = 128,
    steps: int = 5,
    warmup: int = 2,
    gradient_checkpointing: bool = False,
    fp8: bool = False,
    replicate: bool = False,
    stage1_batch: int = 8,
    stage2_batch: int = 1,
    log: Callable[[str], None] = print,
) -> list[ProcessStep]:
    """Time the rows of `setseq.tools.speed.run_shape_bench` in each of `procs` launched processes; prints a row per
    process. CUDA: the allocator's peak; CPU: the peak resident memory over the timed steps
    (`setseq.tools.speed.peak_rss`) and what each process held before them (`held_bytes`). On CPU the cores are
    split between the processes, and glibc's malloc returns every freed block over 128 KiB to the system at
    once (a fixed `MALLOC_MMAP_THRESHOLD_`; by default it keeps up to 32 MiB blocks for reuse), so that
    resident memory follows the live tensors: else the blocks FSDP2 gathers and frees stay resident after
    each step. Refused: fewer than one process, more processes than GPUs."""
    if procs < 1:
        raise SetseqError(f"--procs {procs}: the bench needs at least one process", "use --procs 1 or more")
    if z.device.type == "cuda" and procs > visible_gpus():
        raise SetseqError(
            f"--procs {procs} but {visible_gpus()} GPU(s) are visible (one process per GPU)",
            f"use --procs {visible_gpus()} or fewer, or --device cpu",
        )
    settings = dict(
        name=name, device=str(z.device), dtype=str(z.dtype).removeprefix("torch."), frames=z.frames,
        size=[z.height, z.width], layers=z.layers, rank=rank, rows=z.rows(stage1_batch, stage2_batch),
        steps=steps, warmup=warmup, gradient_checkpointing=gradient_checkpointing, fp8=fp8,
        fsdp=not replicate,
    )  # fmt: skip
    env = dict(os.environ)
    if z.device.type == "cpu":  # the cores shared out (torchrun would give each process one thread)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // procs))
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    log(_describe(name, procs, z, rank, gradient_checkpointing, fp8, replicate, env))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "settings.json").write_text(json.dumps(settings))
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
        proc = subprocess.run(
            [*argv, "-m", "setseq.tools.speed_procs", tmp],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        reports = [Path(tmp) / f"rank{r}.json" for r in range(procs)]
        done = [json.loads(f.read_text()) for f in reports if f.is_file()]
    refused = [d["error"] for d in done if "error" in d]
    if refused:
        raise SetseqError(refused[0])
    if proc.returncode != 0 or len(done) != procs:
        raise RuntimeError(
            f"the bench's processes failed (exit status {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    results = [ProcessStep(**row) for d in done for row in d["rows"]]
    log(
        "| stage | frames | micro-batch per process | tokens/sample | process | step s | samples/s, all | "
        "held GiB | peak GiB |"
    )
    log("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r.stage, r.frames, r.rank)):
        log(
            f"| {r.stage} | {r.frames} | {r.micro_batch} | {r.tokens} | {r.rank} | {r.step_s:.3f} | "
            f"{procs * r.micro_batch / r.step_s:.2f} | {r.held_bytes / 2**30:.2f} | {r.peak_bytes / 2**30:.2f} |"
        )
    return results


def _process_bench(folder: Path) -> None:
    """One process of `run_in_processes` (started by torchrun): join the others, build the DiT, hand it to the
    engine when there are several, time each row, and write `rank{N}.json` into `folder`."""
    quiet_libraries()
    s = json.loads((folder / "settings.json").read_text())
    dt, sharded = getattr(torch, s["dtype"]), launched_world() > 1 and s["fsdp"]
    shape, _ = shape_config(s["name"], s["layers"])
    # Built before joining the others (transformers saves the tiny pipeline's text encoder from process 0 only
    # once a process group exists); sharded, on the host, where the DiT stays until FSDP2 moves each shard,
    # and, as `setseq train` loads it, whole in process 0 only (the others' comes from it: `parallelize`).
    bb = build_backbone(
        s["name"],
        offload.HOST if sharded else torch.device(s["device"]),
        dt,
        s["layers"],
        dit_on_meta=sharded and int(os.environ.get("RANK", "0")) > 0,
    )
    procs = init_processes(s["device"])
    report = folder / f"rank{procs.rank}.json"
    try:
        dev = procs.device or torch.device(s["device"])
        if sharded:
            offload.place_around_dit(bb, dev)
        with_lora(bb, s["rank"], s["fp8"], s["gradient_checkpointing"])
        parallelize(bb.transformer, procs, ModelConfig(backbone=shape.family, path=s["name"], fsdp=s["fsdp"]))
        prompt = random_prompt(shape, dev, dt)
        rows = []
        for stage, f, micro in s["rows"]:
            lat = latent_shape(bb, f, *s["size"], shape.latent_channels)
            held = held_bytes(dev)
            sec, mem = time_steps(
                bb, stage, lat, micro, prompt, steps=s["steps"], warmup=s["warmup"], rss=True
            )
            rows.append(
                dict(
                    stage=stage, frames=f, micro_batch=micro, tokens=tokens_per_sample(bb.transformer, lat),
                    rank=procs.rank, step_s=sec, peak_bytes=mem, held_bytes=held,
                )
            )  # fmt: skip
        report.write_text(json.dumps({"rows": rows}))
    except SetseqError as exc:
        report.write_text(json.dumps({"error": str(exc)}))
        raise SystemExit(2) from None
    finally:
        close_processes()


if __name__ == "__main__":  # a process of `run_in_processes`
    _process_bench(Path(sys.argv[1]))
