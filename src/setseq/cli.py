"""The `setseq` command line: each subcommand is one typed function; `main` maps argv onto them.

Heavy imports (torch, diffusers) happen inside the functions so that `setseq --help` is instant.
User errors (`SetseqError`) are printed as one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from setseq.errors import SetseqError


def _size(text: str) -> list[int]:
    """'480x832' -> [480, 832]; '256' -> [256, 256]."""
    try:
        parts = [int(p) for p in text.lower().replace("*", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like 480x832 (height x width), got {text!r}"
        ) from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must look like 480x832 (height x width), got {text!r}")
    return parts


def _model_flags(model: str | None, backbone: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if model is not None:
        out["path"] = model
        from setseq.backbones.base import guess_backbone

        out["backbone"] = backbone or guess_backbone(model)
    elif backbone is not None:
        out["backbone"] = backbone
    return out


def cmd_train(
    video: str | None,
    out: str,
    model: str | None = None,
    backbone: str | None = None,
    token: str | None = None,
    class_word: str | None = None,
    action: str | None = None,
    camera: str | None = None,
    config: str | None = None,
    frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    size: list[int] | None = None,
    resume: bool = False,
    init_lora: str | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    mask: str | None = None,
) -> Path:
    """Personalize a model to one video (stage 1 + stage 2)."""
    from setseq.config import resolve_config
    from setseq.runtime import quiet_libraries
    from setseq.train.run import train

    quiet_libraries()
    if resume:
        given = dict(
            video=video,
            model=model,
            backbone=backbone,
            token=token,
            class_word=class_word,
            action=action,
            camera=camera,
            config=config,
            frames=frames,
            fps=fps,
            start=start,
            end=end,
            size=size,
            init_lora=init_lora,
            mask=mask,
        )
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None] + list(
            overrides or []
        )
        if named:
            raise SetseqError(
                f"--resume continues a run exactly with its saved config; other flags are not allowed with it "
                f"(got {', '.join(named)})",
                "drop them, or start a new run with --init-lora",
            )
        return train(None, out, resume=True, progress=progress)  # type: ignore[arg-type]
    flags: dict[str, Any] = {}
    if m := _model_flags(model, backbone):
        flags["model"] = m
    data = {
        k: v
        for k, v in dict(
            video=video, frames=frames, fps=fps, start=start, end=end, size=size, mask=mask
        ).items()
        if v is not None
    }
    if data:
        flags["data"] = data
    concept = {
        k: v
        for k, v in dict(token=token, class_word=class_word, action=action, camera=camera).items()
        if v is not None
    }
    if concept:
        flags["concept"] = concept
    cfg = resolve_config(config, flags, overrides)
    return train(cfg, out, init_lora=init_lora, progress=progress)


def cmd_generate(
    run: str | None,
    prompts: list[str],
    out: str,
    model: str | None = None,
    backbone: str | None = None,
    identity_scale: float | None = None,
    motion_scale: float | None = None,
    cfg: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    size: list[int] | None = None,
    frames: int | None = None,
    negative_prompt: str = "",
    device: str = "auto",
    dtype: str = "auto",
    block_swap: int = 0,
    image: str | None = None,
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
        image=first,
    )
    results = generate_to_files(pm, prompts, opts, out)
    for r in results:
        print(f"wrote {r.mp4} and {r.png}  ({r.prompt!r})")
    return [r.mp4 for r in results if r.mp4]


def cmd_compose(
    runs: list[str],
    prompts: list[str],
    out: str,
    weights: list[float] | None = None,
    model: str | None = None,
    cfg: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
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
    results = generate_to_files(pm, prompts, GenerateOptions(guidance_scale=cfg, steps=steps, seed=seed), out)
    for r in results:
        print(f"wrote {r.mp4} and {r.png}  ({r.prompt!r})")
    return [r.mp4 for r in results if r.mp4]


def cmd_export(
    run: str,
    fmt: str,
    out: str,
    identity_scale: float | None = None,
    motion_scale: float | None = None,
    dtype: str = "float32",
    expert: str | None = None,
    part: str | None = None,
) -> list[Path]:
    """Export a run's LoRA for diffusers or ComfyUI: identity and motion merged, one part, or both parts as
    two files (ComfyUI's default; Wan 2.2 A14B: one `expert` per file)."""
    import torch

    from setseq.export import export_files, load_setseq, resolve_format

    layout, part = resolve_format(fmt, part)  # bad flags are refused before the file is read
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


def cmd_info(run: str) -> dict[str, Any]:
    """Print what a run folder (or a setseq.safetensors file) holds."""
    from setseq.info import describe_run

    text, data = describe_run(Path(run))
    print(text)
    return data


def cmd_eval(
    reference: str,
    videos: list[str],
    out: str,
    prompts: list[str] | None = None,
    clip: str | None = None,
    dino: str | None = None,
    arcface: str | None = None,
    metrics: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Score generated videos against the reference: MSE, ID, C-T, TC (the paper's) and motion (ours)."""
    from setseq.eval.run_eval import evaluate
    from setseq.runtime import quiet_libraries

    quiet_libraries()
    return evaluate(reference, videos, out, prompts, clip, dino, arcface, metrics, progress=progress).path


def cmd_report(run: str, out: str, videos: str | None = None, metrics: str | None = None) -> Path:
    """Write a self-contained HTML page: the videos side by side in sync, metrics, loss curves, config."""
    from setseq.report import build_report

    path = build_report(run, out, videos=videos, metrics=metrics)
    print(f"wrote {path}")
    return path


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="setseq",
        description="Set-and-Sequence: personalize a text-to-video DiT to a dynamic concept from one video.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="personalize a model to one video (stage 1 + stage 2)")
    t.add_argument("--video", help="the input video (any container PyAV reads)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument(
        "--model",
        help="'toy' (default), or a diffusers Wan, CogVideoX, LTX-Video or HunyuanVideo checkpoint: local folder or hub id",
    )
    t.add_argument(
        "--backbone",
        help="backbone family: toy, wan, cogvideox, ltx, hunyuan (default: read from the --model folder's "
        "model_index.json; wan for a hub id)",
    )
    t.add_argument("--token", help="concept token [v] (default sks)")
    t.add_argument("--class-word", help="class word, e.g. person")
    t.add_argument("--action", help="coarse action words for T_motion, e.g. 'dancing'")
    t.add_argument("--camera", help="camera words for T_motion, e.g. 'static camera'")
    t.add_argument("--config", help="YAML run config")
    t.add_argument("--frames", type=int, help="clip length (4k+1 for Wan)")
    t.add_argument("--fps", type=float, help="resample the video to this frame rate")
    t.add_argument("--start", type=float, help="start time in seconds")
    t.add_argument("--end", type=float, help="end time in seconds")
    t.add_argument("--size", type=_size, help="HxW, e.g. 480x832")
    t.add_argument(
        "--mask",
        help="subject mask: a mask video or a folder of per-frame masks (white = subject), same frames and size "
        "as the video; used by stageN.background_weight / stageN.background_swap (data.mask)",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out exactly (optimizer, step, RNG)"
    )
    t.add_argument("--init-lora", help="start a NEW run from the weights of a setseq.safetensors")
    t.add_argument(
        "--method",
        help="setseq (default) or a baseline: dreambooth, lora1, two_stage, dreammix, textual_inversion "
        "(same as method=...)",
    )
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. stage1.steps=600")

    g = sub.add_parser("generate", help="generate videos with a run (or the base model alone)")
    g.add_argument("run", nargs="?", help="run folder or setseq.safetensors (omit for the base model alone)")
    g.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    g.add_argument("--out", required=True, help="output .mp4 (a .png contact sheet is written beside it)")
    g.add_argument(
        "--image",
        help="first frame (PNG, JPEG) for image-to-video: needs an image-to-video --model (Wan I2V, Wan 2.2 "
        "TI2V-5B); resized and centre-cropped to the video's size",
    )
    g.add_argument("--model", help="base model (default: the run's own model, else toy)")
    g.add_argument("--backbone")
    g.add_argument("--identity-scale", type=float)
    g.add_argument("--motion-scale", type=float)
    g.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    g.add_argument("--steps", type=int, help="sampling steps (default: the backbone's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=_size)
    g.add_argument("--frames", type=int)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--device", default="auto")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: the run's training dtype, else bfloat16 on a GPU (float32 for the toy model and on CPU)",
    )
    g.add_argument(
        "--block-swap",
        type=int,
        default=0,
        metavar="N",
        help="keep the linear weights of the DiT's last N blocks in host memory (a model larger than the GPU)",
    )

    c = sub.add_parser(
        "compose", help="generate several concepts together: a jointly trained run, or a weighted sum of runs"
    )
    c.add_argument("runs", nargs="+", help="one multi-concept run, or several runs (their LoRAs are summed)")
    c.add_argument(
        "--prompt", action="append", required=True, help="a prompt naming two or more concept tokens"
    )
    c.add_argument("--out", required=True, help="output .mp4")
    c.add_argument("--weights", type=lambda t: [float(v) for v in _csv(t)], help="one per run, e.g. 1,0.8")
    c.add_argument("--model", help="base model (default: the first run's)")
    c.add_argument("--cfg", type=float, help="classifier-free guidance scale")
    c.add_argument("--steps", type=int)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    c.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: the run's training dtype, else bfloat16 on a GPU (float32 for the toy model and on CPU)",
    )

    e = sub.add_parser("export", help="export a run's LoRA for diffusers / ComfyUI, or one part of it")
    e.add_argument("run")
    e.add_argument(
        "--format",
        required=True,
        choices=["diffusers", "comfyui", "identity", "motion"],
        help="key layout; identity / motion are aliases of diffusers --part identity / motion",
    )
    e.add_argument(
        "--part",
        choices=["merged", "identity", "motion", "both"],
        help="merged: identity + motion in one LoRA (diffusers' default); identity or motion alone; both: "
        "two files OUT_identity and OUT_motion, to load as two LoRAs with their own strengths (comfyui's default)",
    )
    e.add_argument(
        "--expert", choices=["high", "low"], help="Wan 2.2 A14B: which expert's LoRA (one file each)"
    )
    e.add_argument("--out", required=True)
    e.add_argument("--identity-scale", type=float)
    e.add_argument("--motion-scale", type=float)
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])

    i = sub.add_parser("info", help="print what a run holds")
    i.add_argument("run")

    d = sub.add_parser(
        "demo", help="personalize the shipped toy model to a shipped concept and show the results"
    )
    d.add_argument("--out", default="demo_out")
    d.add_argument("--concept", default=None, help="which shipped concept (default: cyan_diamond_bounce)")
    d.add_argument("--quick", action="store_true", help="a few steps only (CI)")
    d.add_argument(
        "--model", default="toy", help="toy model: toy (default), toy-large, or a toy model folder"
    )

    v = sub.add_parser("eval", help="score generated videos against the reference (MSE, ID, C-T, TC, motion)")
    v.add_argument("videos", nargs="+", help="generated videos")
    v.add_argument("--reference", required=True, help="the original video")
    v.add_argument("--out", required=True, help="folder for metrics.json")
    v.add_argument(
        "--prompt", action="append", help="edit prompt for C-T: one for all videos, or one per video"
    )
    v.add_argument("--clip", help="CLIP folder or cached hub id (default ~/.cache/setseq/clip)")
    v.add_argument("--dino", help="DINOv2 folder or cached hub id, for ID without faces")
    v.add_argument("--arcface", help="ArcFace .onnx file for ID on faces (needs onnxruntime)")
    v.add_argument(
        "--metrics", type=lambda s: [m for m in s.split(",") if m], help="e.g. mse,motion (default: all)"
    )
    v.add_argument("--no-progress", action="store_true")

    b = sub.add_parser(
        "bench", help="the method and the paper's baselines x toy concepts x seeds: the ablation table"
    )
    b.add_argument("--out", default="bench_out", help="folder for bench.json, bench.md and the videos")
    b.add_argument("--quick", action="store_true", help="2 concepts, 1 seed, 4 + 4 steps (CI)")
    b.add_argument("--methods", type=_csv, help="comma-separated (default: all): setseq,dreambooth,...")
    b.add_argument("--concepts", type=_csv, help="comma-separated concept names (default: the whole suite)")
    b.add_argument("--seeds", type=int, default=2, help="how many training seeds per concept (default: 2)")
    b.add_argument(
        "--first-seed", type=int, default=0, help="the first training seed (default: 0); e.g. 1 to add a seed"
    )
    b.add_argument("--suite", help="concept suite JSON (default: the shipped concepts)")
    b.add_argument(
        "--model", default="toy", help="toy model: toy (default), toy-large, or a toy model folder"
    )
    b.add_argument("--keep-runs", action="store_true", help="keep each run's checkpoints and cache")
    b.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many runs at a time, the CPU threads split between them (2 on 2 cores: ~1.5x)",
    )
    b.add_argument(
        "--fresh",
        action="store_true",
        help="train every run again (default: reuse the runs --out already holds with the same settings)",
    )
    b.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. stage1.steps=200")
    b.add_argument(
        "--shape",
        help="instead: time training steps of a real-size DiT with random weights (wan-1.3b, wan-14b, "
        "cogvideox-5b, ltx, hunyuan)",
    )
    b.add_argument(
        "--device", default="auto", help="--shape: cuda (480x832, 33 and 81 frames) or cpu (small)"
    )
    b.add_argument("--frames", type=lambda s: [int(x) for x in s.split(",")], help="--shape: e.g. 33,81")
    b.add_argument("--size", type=_size, help="--shape: HxW, e.g. 480x832")
    b.add_argument("--layers", type=int, help="--shape: build with this many blocks (default: all; cpu: 2)")
    b.add_argument("--rank", type=int, default=128, help="--shape: LoRA rank")
    b.add_argument("--steps", type=int, default=5, help="--shape: timed steps per row (after 2 warm-up)")
    b.add_argument("--gradient-checkpointing", action="store_true", help="--shape: checkpoint every block")
    b.add_argument("--fp8", action="store_true", help="--shape: fp8 base weights (model.fp8)")
    b.add_argument(
        "--block-swap",
        type=int,
        default=0,
        metavar="N",
        help="--shape: model.block_swap=N (host-resident blocks)",
    )

    r = sub.add_parser("report", help="write a self-contained HTML report of a run or a demo folder")
    r.add_argument("run", help="a run folder, or a demo folder (with run/ and the videos)")
    r.add_argument("--out", required=True, help="the .html file to write")
    r.add_argument(
        "--videos", help="folder with the videos (default: the demo folder, or the run's samples/)"
    )
    r.add_argument("--metrics", help="metrics.json to show (default: VIDEOS/metrics.json if present)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come anywhere after `train`, between flags too.
    args, extra = parser.parse_known_args(argv)
    if args.command == "eval":  # videos may come before and after the options
        args.videos = list(args.videos) + [a for a in extra if not a.startswith("-")]
        extra = [a for a in extra if a.startswith("-")]
    takes_overrides = args.command in ("train", "bench")
    stray = [a for a in extra if not takes_overrides or a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if takes_overrides:
        args.overrides = list(args.overrides) + extra
    try:
        if args.command == "train":
            cmd_train(
                args.video,
                args.out,
                args.model,
                args.backbone,
                args.token,
                args.class_word,
                args.action,
                args.camera,
                args.config,
                args.frames,
                args.fps,
                args.start,
                args.end,
                args.size,
                args.resume,
                args.init_lora,
                args.overrides + ([f"method={args.method}"] if args.method else []),
                progress=not args.no_progress,
                mask=args.mask,
            )
        elif args.command == "generate":
            cmd_generate(
                args.run,
                args.prompt,
                args.out,
                args.model,
                args.backbone,
                args.identity_scale,
                args.motion_scale,
                args.cfg,
                args.steps,
                args.seed,
                args.size,
                args.frames,
                args.negative_prompt,
                args.device,
                args.dtype,
                args.block_swap,
                args.image,
            )
        elif args.command == "compose":
            cmd_compose(
                args.runs,
                args.prompt,
                args.out,
                args.weights,
                args.model,
                args.cfg,
                args.steps,
                args.seed,
                args.device,
                args.dtype,
            )
        elif args.command == "export":
            cmd_export(
                args.run,
                args.format,
                args.out,
                args.identity_scale,
                args.motion_scale,
                args.dtype,
                args.expert,
                args.part,
            )
        elif args.command == "info":
            cmd_info(args.run)
        elif args.command == "demo":
            from setseq.demo import run_demo
            from setseq.runtime import quiet_libraries

            quiet_libraries()
            run_demo(Path(args.out), concept=args.concept, quick=args.quick, model=args.model)
        elif args.command == "eval":
            cmd_eval(
                args.reference,
                args.videos,
                args.out,
                args.prompt,
                args.clip,
                args.dino,
                args.arcface,
                args.metrics,
                progress=not args.no_progress,
            )
        elif args.command == "report":
            cmd_report(args.run, args.out, args.videos, args.metrics)
        elif args.command == "bench" and args.shape:
            from setseq.runtime import quiet_libraries
            from setseq.speed import run_shape_bench

            quiet_libraries()
            run_shape_bench(
                args.shape,
                device=args.device,
                frames=args.frames,
                size=args.size,
                layers=args.layers,
                rank=args.rank,
                steps=args.steps,
                gradient_checkpointing=args.gradient_checkpointing,
                fp8=args.fp8,
                block_swap=args.block_swap,
            )
        elif args.command == "bench":
            from setseq.bench import run_bench
            from setseq.runtime import quiet_libraries

            quiet_libraries()
            run_bench(
                args.out,
                methods=args.methods,
                concepts=args.concepts,
                seeds=args.seeds,
                first_seed=args.first_seed,
                quick=args.quick,
                suite=args.suite,
                model=args.model,
                overrides=args.overrides,
                keep_runs=args.keep_runs,
                fresh=args.fresh,
                jobs=args.jobs,
            )
    except SetseqError as exc:
        print(f"setseq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("setseq: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
