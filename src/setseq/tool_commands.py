"""The subcommands that run `setseq.tools` (demo, bench, report), apart from the core's (`setseq.commands`),
declared the same way: one typed function per subcommand, whose parameters are its flags (`setseq.flags.Arg`).
`setseq.cli` lists both modules' functions. As there, torch and the tools are imported inside the functions.
"""

from pathlib import Path
from typing import Annotated, Any

from setseq.commands import CeilingCache, ToyModel
from setseq.errors import SetseqError
from setseq.flags import Arg, csv_of, parse_csv, parse_size
from setseq.names import METHODS


def cmd_demo(
    *,
    out: Annotated[str, Arg("folder for the videos, metrics and the run", "demo_out")],
    concept: Annotated[str | None, Arg("which shipped concept (unset: cyan_diamond_bounce)", None)],
    quick: Annotated[bool, Arg("a few steps only (CI)", False)],
    model: ToyModel,
    ceiling_cache: CeilingCache,
) -> dict[str, Any]:
    """Personalize the shipped toy model to a shipped concept and show the results.

    Trains, generates, scores and writes the videos."""
    from setseq.runtime import quiet_libraries
    from setseq.tools.demo import run_demo

    quiet_libraries()
    return run_demo(Path(out), concept=concept, quick=quick, model=model, ceiling_cache=ceiling_cache)


# cmd_bench's flags that take more than a line to declare (the shorter ones are declared in place).
BenchMethods = Annotated[
    list[str] | None, Arg(f"comma-separated (default: all): {','.join(METHODS)}", None, type=parse_csv)
]
BenchConcepts = Annotated[
    list[str] | None,
    Arg("comma-separated concept names (default: the whole suite)", None, type=parse_csv),
]
BenchJobs = Annotated[
    int,
    Arg("train this many runs at a time, the CPU threads split between them (2 on 2 cores: ~1.5x)", 1),
]
BenchFresh = Annotated[
    bool,
    Arg(
        "train every run again (default: reuse the runs --out already holds with the same settings)",
        False,
    ),
]
BenchOverrides = Annotated[
    list[str], Arg("config overrides for every run, e.g. stage1.steps=200", positional=True, nargs="*")
]
BenchShape = Annotated[
    str | None,
    Arg(
        "instead: time training steps of a real-size DiT with random weights, a family's published "
        "architecture by name (e.g. wan-14b, ltx-2; a name it does not know lists them all)",
        None,
    ),
]
BenchFsdpOffload = Annotated[
    bool,
    Arg("--shape: model.fsdp_offload=true (every DiT weight in host memory, copied in by FSDP2)", False),
]
BenchProcs = Annotated[
    int | None,
    Arg(
        "--shape: launch P processes (torchrun) that each time the steps, the DiT sharded across them "
        "(model.fsdp=true) when P > 1; step time and peak memory per process",
        None,
        metavar="P",
    ),
]
BenchReplicate = Annotated[
    bool,
    Arg(
        "--procs: each process holds the whole DiT and the LoRA gradients are all-reduced (FSDP2's "
        "replicate, model.fsdp=false) instead of sharding it",
        False,
    ),
]


def cmd_bench(
    *,
    out: Annotated[str, Arg("folder for bench.json, bench.md and the videos", "bench_out")],
    quick: Annotated[bool, Arg("2 concepts, 1 seed, 4 + 4 steps (CI)", False)],
    methods: BenchMethods,
    concepts: BenchConcepts,
    seeds: Annotated[int, Arg("how many training seeds per concept", 2)],
    first_seed: Annotated[int, Arg("the first training seed; e.g. 1 to add a seed", 0)],
    suite: Annotated[str | None, Arg("concept suite JSON (default: the shipped concepts)", None)],
    model: ToyModel,
    keep_runs: Annotated[bool, Arg("keep each run's checkpoints and cache", False)],
    jobs: BenchJobs,
    fresh: BenchFresh,
    ceiling_cache: CeilingCache,
    overrides: BenchOverrides,
    shape: BenchShape,
    device: Annotated[str, Arg("--shape: cuda (480x832, 33 and 81 frames) or cpu (small)", "auto")],
    frames: Annotated[list[int] | None, Arg("--shape: e.g. 33,81", None, type=csv_of(int))],
    size: Annotated[list[int] | None, Arg("--shape: HxW, e.g. 480x832", None, type=parse_size)],
    layers: Annotated[int | None, Arg("--shape: build with this many blocks (default: all; cpu: 2)", None)],
    rank: Annotated[int | None, Arg("--shape: LoRA rank", None, key="lora.rank")],
    steps: Annotated[int, Arg("--shape: timed steps per row (after 2 warm-up)", 5)],
    gradient_checkpointing: Annotated[bool, Arg("--shape: checkpoint every block", False)],
    fp8: Annotated[bool, Arg("--shape: fp8 base weights (model.fp8)", False)],
    block_swap: Annotated[int, Arg("--shape: model.block_swap=N (host-resident blocks)", 0, metavar="N")],
    fsdp_offload: BenchFsdpOffload,
    procs: BenchProcs,
    replicate: BenchReplicate,
) -> None:
    """The method and the paper's baselines x toy concepts x seeds: the ablation table.

    The table is `setseq.tools.bench`'s; with `shape`, the step times of a real-size DiT instead (`setseq.tools.speed`),
    in `procs` launched processes when given."""
    from setseq.runtime import quiet_libraries

    if procs is not None and not shape:
        raise SetseqError("--procs times a --shape", "add --shape NAME (e.g. wan-1.3b), or use --jobs")
    if replicate and procs is None:
        raise SetseqError("--replicate is a way to run --procs", "add --procs P, or drop --replicate")
    quiet_libraries()
    if shape:
        if rank is None:  # (the default is the config's, declared once there)
            from setseq.config_keys import key_default

            rank = key_default("lora.rank")
        _shape_bench(
            shape, device=device, frames=frames, size=size, layers=layers, rank=rank, steps=steps,
            gradient_checkpointing=gradient_checkpointing, fp8=fp8, block_swap=block_swap,
            fsdp_offload=fsdp_offload, procs=procs, replicate=replicate,
        )  # fmt: skip
        return
    from setseq.tools.bench import run_bench

    run_bench(
        out,
        methods=methods,
        concepts=concepts,
        seeds=seeds,
        first_seed=first_seed,
        quick=quick,
        suite=suite,
        model=model,
        overrides=overrides,
        keep_runs=keep_runs,
        fresh=fresh,
        jobs=jobs,
        ceiling_cache=ceiling_cache,
    )


def _shape_bench(
    shape: str,
    *,
    device: str,
    frames: list[int] | None,
    size: list[int] | None,
    layers: int | None,
    rank: int,
    steps: int,
    gradient_checkpointing: bool,
    fp8: bool,
    block_swap: int,
    fsdp_offload: bool,
    procs: int | None,
    replicate: bool,
) -> None:
    """`setseq bench --shape`: the step times of a real-size DiT (`setseq.tools.speed`), in `procs` launched
    processes when given (`setseq.tools.speed_procs`)."""

    if procs is not None:
        if block_swap or fsdp_offload:
            flag = "--block-swap" if block_swap else "--fsdp-offload"
            raise SetseqError(
                f"--procs times the DiT sharded or replicated across processes, which is not combined with {flag}",
                f"drop {flag}, or --procs",
            )
        from setseq.tools.speed import bench_sizes
        from setseq.tools.speed_procs import run_in_processes

        z = bench_sizes(device, None, frames, size, layers)
        run_in_processes(
            shape,
            procs,
            z,
            rank=rank,
            steps=steps,
            gradient_checkpointing=gradient_checkpointing,
            fp8=fp8,
            replicate=replicate,
        )
        return
    from setseq.tools.speed import run_shape_bench
    from setseq.train.distributed import close_processes

    try:
        run_shape_bench(
            shape, device=device, frames=frames, size=size, layers=layers, rank=rank, steps=steps,
            gradient_checkpointing=gradient_checkpointing, fp8=fp8, block_swap=block_swap,
            fsdp_offload=fsdp_offload,
        )  # fmt: skip
    finally:
        close_processes()  # the one-process group of --fsdp-offload


def cmd_report(
    *,
    run: Annotated[str, Arg("a run folder, or a demo folder (with run/ and the videos)", positional=True)],
    out: Annotated[str, Arg("the .html file to write")],
    videos: Annotated[
        str | None, Arg("folder with the videos (default: the demo folder, or the run's samples/)", None)
    ],
    metrics: Annotated[
        str | None, Arg("metrics.json to show (default: VIDEOS/metrics.json if present)", None)
    ],
) -> Path:
    """Write a self-contained HTML report of a run or a demo folder.

    The videos side by side in sync, metrics, loss curves, config."""
    from setseq.tools.report import build_report

    path = build_report(run, out, videos=videos, metrics=metrics)
    print(f"wrote {path}")
    return path
