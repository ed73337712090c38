"""What each `setseq` subcommand does: one typed function per subcommand.

`setseq.cli` declares the flags (names, types, defaults, help) and calls these functions with the parsed
values as keyword arguments, so each parameter is a flag's `dest` and has no default of its own.
Heavy imports (torch, diffusers) happen inside the functions so that `setseq --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _model_flags(model: str | None, backbone: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if model is not None:
        out["path"] = model
        from setseq.backbones.registry import guess_backbone

        out["backbone"] = backbone or guess_backbone(model)
    elif backbone is not None:
        out["backbone"] = backbone
    return out


def cmd_train(
    *,
    out: str,
    video: str | None,
    model: str | None,
    backbone: str | None,
    token: str | None,
    class_word: str | None,
    action: str | None,
    camera: str | None,
    config: str | None,
    frames: int | None,
    fps: float | None,
    start: float | None,
    end: float | None,
    size: list[int] | None,
    mask: str | None,
    mask_prompt: str | None,
    resume: bool,
    init_lora: str | None,
    method: str | None,
    progress: bool,
    overrides: list[str],
) -> Path:
    """Personalize a model to one video (stage 1 + stage 2); with `resume`, continue the run in `out`."""
    from setseq.config import resolve_train_config
    from setseq.runtime import quiet_libraries
    from setseq.train.distributed import close_processes
    from setseq.train.outputs import check_out_folder
    from setseq.train.run import train

    quiet_libraries()
    try:
        if resume:  # main has refused every other flag, and every override --resume does not take
            from setseq.train.setup import resumed_config

            cfg = resumed_config(Path(out), video=video, model=model, mask=mask, overrides=overrides)
            return train(cfg, out, resume=True, progress=progress)
        flags: dict[str, Any] = {}
        if m := _model_flags(model, backbone):
            flags["model"] = m
        sections = {
            "data": dict(
                video=video,
                frames=frames,
                fps=fps,
                start=start,
                end=end,
                size=size,
                mask=mask,
                mask_prompt=mask_prompt,
            ),  # fmt: skip
            "concept": dict(token=token, class_word=class_word, action=action, camera=camera),
        }
        for name, values in sections.items():
            if given := {k: v for k, v in values.items() if v is not None}:
                flags[name] = given
        overrides = overrides + ([f"method={method}"] if method else [])
        check_out_folder(Path(out))  # (before the config's notes: a refusal stays one line)
        cfg = resolve_train_config(config, flags, overrides)  # (a toy model: the toy recipe by default)
        return train(cfg, out, init_lora=init_lora, progress=progress)
    finally:
        close_processes()  # under a launcher: leave the process group before the interpreter's teardown


def cmd_generate(
    *,
    run: str | None,
    prompts: list[str],
    out: str,
    image: str | None,
    model: str | None,
    backbone: str | None,
    identity_scale: float | None,
    motion_scale: float | None,
    cfg: float | None,
    steps: int | None,
    seed: int,
    size: list[int] | None,
    frames: int | None,
    fps: float | None,
    negative_prompt: str,
    device: str,
    dtype: str,
    block_swap: int,
) -> list[Path]:
    """Generate videos with a run's LoRA on its model, or with the base model alone; with `image`, from that
    first frame on an image-to-video model."""
    from setseq.infer.generate import GenerateOptions, Personalized, generate_to_files
    from setseq.runtime import quiet_libraries

    quiet_libraries()
    first = None
    if image is not None:  # a bad image is refused before the model is loaded
        from setseq.data.image import read_image

        first = read_image(image)
    pm = Personalized.load(run, model, backbone, device=device, dtype=dtype, block_swap=block_swap)
    opts = GenerateOptions(
        identity_scale,
        motion_scale,
        cfg,
        steps,
        seed,
        frames,
        size[0] if size else None,
        size[1] if size else None,
        negative_prompt,
        fps=fps,
        image=first,
    )
    results = generate_to_files(pm, prompts, opts, out)
    for r in results:
        print(f"wrote {r.mp4} and {r.png}  ({r.prompt!r})")
    return [r.mp4 for r in results if r.mp4]


def cmd_compose(
    *,
    runs: list[str],
    prompts: list[str],
    out: str,
    weights: list[float] | None,
    model: str | None,
    cfg: float | None,
    steps: int | None,
    seed: int,
    fps: float | None,
    device: str,
    dtype: str,
) -> list[Path]:
    """Generate with several concepts: one jointly trained run, or a weighted sum of separate runs."""
    from setseq.infer.compose import load_composition
    from setseq.infer.generate import GenerateOptions, generate_to_files
    from setseq.runtime import quiet_libraries

    quiet_libraries()
    pm, tokens = load_composition(runs, weights, model, device=device, dtype=dtype)
    for prompt in prompts:
        named = [t for t in tokens if t in prompt.split()]
        if len(named) < 2:
            print(
                f"warning: {prompt!r} names {len(named)} of the concept tokens {tokens}; composing needs two or more",
                file=sys.stderr,
            )
    results = generate_to_files(
        pm, prompts, GenerateOptions(guidance_scale=cfg, steps=steps, seed=seed, fps=fps), out
    )
    for r in results:
        print(f"wrote {r.mp4} and {r.png}  ({r.prompt!r})")
    return [r.mp4 for r in results if r.mp4]


def cmd_export(
    *,
    run: str,
    format: str,
    part: str | None,
    expert: str | None,
    out: str,
    identity_scale: float | None,
    motion_scale: float | None,
    dtype: str,
) -> list[Path]:
    """Export a run's LoRA for diffusers or ComfyUI: identity and motion merged, one part, or both parts as
    two files (ComfyUI's default; Wan 2.2 A14B: one `expert` per file)."""
    import torch

    from setseq.export import export_files, load_setseq, resolve_format

    layout, part = resolve_format(format, part)  # bad flags are refused before the file is read
    lora = load_setseq(run)
    paths = export_files(
        lora,
        layout,
        out,
        part,
        identity_scale,
        motion_scale,
        dtype={"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype],
        expert=expert,
    )
    names = ["identity", "motion"] if part == "both" else [part]
    for path, name in zip(paths, names):
        print(f"wrote {path} ({layout}, {name})")
    return paths


def cmd_info(*, run: str) -> dict[str, Any]:
    """Print what a run folder (or a setseq.safetensors file) holds."""
    from setseq.info import describe_run

    text, data = describe_run(Path(run))
    print(text)
    return data


def cmd_demo(
    *, out: str, concept: str | None, quick: bool, model: str, ceiling_cache: str | None
) -> dict[str, Any]:
    """Personalize the shipped toy model to a shipped concept, generate, score, and write the videos."""
    from setseq.demo import run_demo
    from setseq.runtime import quiet_libraries

    quiet_libraries()
    return run_demo(Path(out), concept=concept, quick=quick, model=model, ceiling_cache=ceiling_cache)


def cmd_eval(
    *,
    videos: list[str],
    reference: str,
    out: str,
    prompts: list[str] | None,
    clip: str | None,
    dino: str | None,
    arcface: str | None,
    metrics: list[str] | None,
    progress: bool,
) -> Path:
    """Score generated videos against the reference: MSE, ID, C-T, TC (the paper's) and motion (ours)."""
    from setseq.eval.run_eval import evaluate
    from setseq.runtime import quiet_libraries

    quiet_libraries()
    return evaluate(reference, videos, out, prompts, clip, dino, arcface, metrics, progress=progress).path


def cmd_bench(
    *,
    out: str,
    quick: bool,
    methods: list[str] | None,
    concepts: list[str] | None,
    seeds: int,
    first_seed: int,
    suite: str | None,
    model: str,
    keep_runs: bool,
    jobs: int,
    fresh: bool,
    ceiling_cache: str | None,
    overrides: list[str],
    shape: str | None,
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
    """The ablation table (`setseq.bench`); with `shape`, the step times of a real-size DiT (`setseq.speed`),
    in `procs` launched processes when given."""
    from setseq.errors import SetseqError
    from setseq.runtime import quiet_libraries

    if procs is not None and not shape:
        raise SetseqError("--procs times a --shape", "add --shape NAME (e.g. wan-1.3b), or use --jobs")
    if replicate and procs is None:
        raise SetseqError("--replicate is a way to run --procs", "add --procs P, or drop --replicate")
    quiet_libraries()
    if shape:
        _shape_bench(
            shape, device=device, frames=frames, size=size, layers=layers, rank=rank, steps=steps,
            gradient_checkpointing=gradient_checkpointing, fp8=fp8, block_swap=block_swap,
            fsdp_offload=fsdp_offload, procs=procs, replicate=replicate,
        )  # fmt: skip
        return
    from setseq.bench import run_bench

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
    """`setseq bench --shape`: the step times of a real-size DiT (`setseq.speed`), in `procs` launched
    processes when given (`setseq.speed_procs`)."""
    from setseq.errors import SetseqError

    if procs is not None:
        if block_swap or fsdp_offload:
            flag = "--block-swap" if block_swap else "--fsdp-offload"
            raise SetseqError(
                f"--procs times the DiT sharded or replicated across processes, which is not combined with {flag}",
                f"drop {flag}, or --procs",
            )
        from setseq.speed import bench_sizes
        from setseq.speed_procs import run_in_processes

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
    from setseq.speed import run_shape_bench
    from setseq.train.distributed import close_processes

    try:
        run_shape_bench(
            shape, device=device, frames=frames, size=size, layers=layers, rank=rank, steps=steps,
            gradient_checkpointing=gradient_checkpointing, fp8=fp8, block_swap=block_swap,
            fsdp_offload=fsdp_offload,
        )  # fmt: skip
    finally:
        close_processes()  # the one-process group of --fsdp-offload


def cmd_report(*, run: str, out: str, videos: str | None, metrics: str | None) -> Path:
    """Write a self-contained HTML page: the videos side by side in sync, metrics, loss curves, config."""
    from setseq.report import build_report

    path = build_report(run, out, videos=videos, metrics=metrics)
    print(f"wrote {path}")
    return path


def cmd_mask(
    *,
    video: str,
    prompt: str,
    out: str,
    segmenter: str,
    detector: str,
    threshold: float,
    start: float,
    end: float | None,
    device: str,
) -> Path:
    """Make a subject mask of `video` from a word: per-frame PNGs (or a mask video), what `--mask` takes."""
    from setseq.data.segment import SegmenterSpec, write_mask
    from setseq.errors import SetseqError
    from setseq.runtime import quiet_libraries, resolve_device

    if not 0.0 <= threshold <= 1.0:
        raise SetseqError(f"--threshold must be in [0, 1], got {threshold}", "pass e.g. --threshold 0.3")
    quiet_libraries()
    spec = SegmenterSpec(segmenter, detector, threshold)
    return write_mask(video, prompt, out, spec, resolve_device(device), start=start, end=end)
