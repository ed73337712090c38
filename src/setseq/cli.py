"""The `setseq` command line: parsing and dispatch.

Each flag is declared once, in the `_add_*` function of its subcommand, which also names the function in
`setseq.commands` that runs it (`set_defaults(func=...)`); `main` calls that function with the parsed values
as keyword arguments, so its parameters are the flags' `dest`s (tests/test_cli.py checks that they match).
Nothing here imports torch: `setseq --help` is instant. `--help` shows each option's default (a train flag
that sets a config key names the key and its default, read from `setseq.config`); `setseq train --list-keys`
lists every config key; a misspelt subcommand, flag or choice gets a "did you mean".
User errors (`SetseqError`) are printed as one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from setseq import commands
from setseq.errors import SetseqError

# Copied from `setseq.config.METHODS` (its keys, in order; tests/test_cli.py checks it): importing that
# module brings dataclasses and inspect, a fifth of `setseq --help`'s start-up.
METHOD_NAMES = ("setseq", "dreambooth", "lora1", "two_stage", "dreammix", "textual_inversion")
# The flags several subcommands share, word for word.
INFER_DTYPE: dict[str, Any] = dict(
    default="auto",
    choices=["auto", "float32", "bfloat16", "float16"],
    help="auto: the run's training dtype, else bfloat16 on a GPU (float32 for the toy model and on CPU)",
)
FPS_HELP = "frame rate of the written video (default: the run's, i.e. its clip's; else the backbone's)"
TOY_MODEL: dict[str, Any] = dict(default="toy", help="toy model: toy, toy-large, or a toy model folder")
DEVICE: dict[str, Any] = dict(default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
SEED: dict[str, Any] = dict(type=int, default=0, help="sampling seed (the same seed gives the same video)")
# `train --resume` continues a run with its saved config: the only train fields it takes (--video, --model,
# --mask: the same file or folder, moved; checked by content). Every other train flag defaults to None (the
# overrides to []), so one that is set was given.
RESUME_TAKES = ("out", "resume", "progress", "video", "model", "mask")
# The config keys `--resume` may change (mid-run safe: the learning rate, steps, checkpointing, logging,
# samples); any other override is refused by name.
RESUME_KEYS = (
    "stage1.lr",
    "stage2.lr",
    "stage1.steps",
    "stage2.steps",
    "concept.embedding_lr",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.tensorboard",
    "train.sample_every",
    "train.sample_steps",
    "train.memory_check",
)


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


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _show(value: Any) -> str:
    """A default as shown in --help: a list comma-separated, an empty text quoted."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    return repr(value) if value == "" else str(value)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults after each help text, without the uninformative ones (None, flags' True/False);
    a flag that sets a config key names it, with its default and the toy recipe's where that differs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        key = getattr(action, "config_key", None)
        if key:
            from setseq.config import TOY_RECIPE, key_default, recipe_value

            default, toy = key_default(key), recipe_value(TOY_RECIPE, key)
            shown = [f"default {_show(default)}"] if default not in (None, "") else []
            if toy is not None and toy != default:
                shown.append(f"toy recipe {_show(toy)}")
            return f"{text} ({'; '.join([key, *shown])})".replace("%", "%%")
        if isinstance(action.default, bool) or action.default in (None, argparse.SUPPRESS, "", []):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that shows defaults (`_Formatter`) and whose errors add a "did you mean" for a
    misspelt subcommand, choice or flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=_Formatter, **kwargs)

    def error(self, message: str) -> Any:  # type: ignore[override]
        from setseq.config import did_you_mean

        hint = None
        if m := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message):
            hint = did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        elif m := re.match(r"unrecognized arguments: (.*)", message):
            flags = [o for a in self._actions for o in a.option_strings]
            hints = [did_you_mean(w, flags) for w in m.group(1).split() if w.startswith("-")]
            hint = " ".join(h for h in hints if h) or None
        super().error(f"{message}; {hint}" if hint else message)


class _ListKeys(argparse.Action):
    """`--list-keys`: print every config key with its default and help, then exit (as --help does)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from setseq.config import format_keys

        try:
            print(format_keys(), flush=True)
        except BrokenPipeError:  # `setseq train --list-keys | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        parser.exit()


def _keyed(parser: argparse.ArgumentParser, flag: str, key: str, **kwargs: Any) -> None:
    """A flag that sets the config key `key` (its --help shows the key and its default)."""
    parser.add_argument(flag, **kwargs).config_key = key  # type: ignore[attr-defined]


def _add_train(sub: Any) -> None:
    t = sub.add_parser("train", help="personalize a model to one video (stage 1 + stage 2)")
    t.set_defaults(func=commands.cmd_train)
    _keyed(t, "--video", "data.video", help="the input video (any container PyAV reads)")
    t.add_argument(
        "--out",
        help="run folder: a new one (or one of only a run's own files); required, except that --resume RUN "
        "names it",
    )
    _keyed(
        t,
        "--model",
        "model.path",
        help="'toy', 'toy-large', or a diffusers Wan, CogVideoX, LTX-Video, HunyuanVideo, HunyuanVideo 1.5 or "
        "LTX-2 checkpoint: local folder or hub id",
    )
    _keyed(
        t,
        "--backbone",
        "model.backbone",
        help="backbone family: toy, wan, cogvideox, ltx, hunyuan, hunyuan15, ltx2 (given --model: read from "
        "its folder's model_index.json; wan for a hub id)",
    )
    _keyed(t, "--token", "concept.token", help="concept token [v]")
    _keyed(t, "--class-word", "concept.class_word", help="class word, e.g. person")
    _keyed(t, "--action", "concept.action", help="coarse action words for T_motion, e.g. 'dancing'")
    _keyed(t, "--camera", "concept.camera", help="camera words for T_motion, e.g. 'static camera'")
    t.add_argument(
        "--config",
        help="a YAML run config, or a shipped recipe's name: toy-demo (the default on a toy model), "
        "wan2.1-t2v-1.3b, wan2.1-t2v-14b",
    )
    t.add_argument(
        "--list-keys", action=_ListKeys, help="print every config key with its default and help, then exit"
    )
    _keyed(t, "--frames", "data.frames", type=int, help="clip length (4k+1 for Wan; unset: the backbone's)")
    _keyed(
        t, "--fps", "data.fps", type=float, help="resample the video to this frame rate (unset: the source's)"
    )
    _keyed(t, "--start", "data.start", type=float, help="start time in seconds")
    _keyed(t, "--end", "data.end", type=float, help="end time in seconds (unset: the end of the video)")
    _keyed(t, "--size", "data.size", type=_size, help="HxW, e.g. 480x832 (unset: the backbone's)")
    _keyed(
        t,
        "--mask",
        "data.mask",
        help="subject mask: a mask video or a folder of per-frame masks (white = subject), same frames and size "
        "as the video, or 'auto' to make one from --mask-prompt (setseq mask); with a mask the stages swap "
        "backgrounds (stage1.background_swap=1, stage2.background_swap=0.25) unless a mask option is set",
    )
    t.add_argument(
        "--mask-prompt", help="--mask auto: the word that names the subject (default: the class word)"
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN",
        help="continue the run in RUN (or --out) exactly (optimizer, step, RNG); takes --video, --model and "
        "--mask to point to moved inputs (checked to be the same), and the overrides "
        + ", ".join(RESUME_KEYS),
    )
    t.add_argument("--init-lora", help="start a NEW run from the weights of a setseq.safetensors")
    _keyed(
        t,
        "--method",
        "method",
        help=f"setseq or a baseline: {', '.join(METHOD_NAMES[1:])}",
    )
    t.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar: a plain line every train.progress_every steps instead (as when the output is "
        "not a terminal)",
    )
    t.add_argument(
        "overrides",
        nargs="*",
        help="dotted key=value config overrides, e.g. stage1.steps=600 (see --list-keys)",
    )


def _add_generate(sub: Any) -> None:
    g = sub.add_parser("generate", help="generate videos with a run (or the base model alone)")
    g.set_defaults(func=commands.cmd_generate)
    g.add_argument("run", nargs="?", help="run folder or setseq.safetensors (omit for the base model alone)")
    g.add_argument(
        "--prompt",
        dest="prompts",
        metavar="PROMPT",
        action="append",
        required=True,
        help="prompt (repeat for several)",
    )
    g.add_argument("--out", required=True, help="output .mp4 (a .png contact sheet is written beside it)")
    g.add_argument(
        "--image",
        help="first frame (PNG, JPEG) for image-to-video: needs an image-to-video --model (Wan I2V, Wan 2.2 "
        "TI2V-5B); resized and centre-cropped to the video's size",
    )
    g.add_argument("--model", help="base model (default: the run's own model, else toy)")
    g.add_argument(
        "--backbone", help="the base model's family, when --model does not say (as train --backbone)"
    )
    g.add_argument(
        "--identity-scale", type=float, help="strength of the identity LoRA (unset: the run's, 1; 0: off)"
    )
    g.add_argument(
        "--motion-scale", type=float, help="strength of the motion residual (unset: the run's, 1; 0: off)"
    )
    g.add_argument(
        "--cfg", type=float, help="classifier-free guidance scale (unset: the run's or backbone's)"
    )
    g.add_argument("--steps", type=int, help="sampling steps (unset: the backbone's)")
    g.add_argument("--seed", **SEED)
    g.add_argument("--size", type=_size, help="HxW, e.g. 480x832 (unset: the run's training size)")
    g.add_argument("--frames", type=int, help="frames per video (unset: the run's clip length)")
    g.add_argument("--fps", type=float, help=FPS_HELP)
    g.add_argument("--negative-prompt", default="", help="what the guidance steers away from")
    g.add_argument("--device", **DEVICE)
    g.add_argument("--dtype", **INFER_DTYPE)
    g.add_argument(
        "--block-swap",
        type=int,
        default=0,
        metavar="N",
        help="keep the linear weights of the DiT's last N blocks in host memory (a model larger than the GPU)",
    )


def _add_compose(sub: Any) -> None:
    c = sub.add_parser(
        "compose", help="generate several concepts together: a jointly trained run, or a weighted sum of runs"
    )
    c.set_defaults(func=commands.cmd_compose)
    c.add_argument("runs", nargs="+", help="one multi-concept run, or several runs (their LoRAs are summed)")
    c.add_argument(
        "--prompt",
        dest="prompts",
        metavar="PROMPT",
        action="append",
        required=True,
        help="a prompt naming two or more concept tokens",
    )
    c.add_argument("--out", required=True, help="output .mp4")
    c.add_argument("--weights", type=lambda t: [float(v) for v in _csv(t)], help="one per run, e.g. 1,0.8")
    c.add_argument("--model", help="base model (default: the first run's)")
    c.add_argument(
        "--cfg", type=float, help="classifier-free guidance scale (unset: the run's or backbone's)"
    )
    c.add_argument("--steps", type=int, help="sampling steps (unset: the backbone's)")
    c.add_argument("--seed", **SEED)
    c.add_argument("--fps", type=float, help=FPS_HELP)
    c.add_argument("--device", **DEVICE)
    c.add_argument("--dtype", **INFER_DTYPE)


def _add_export(sub: Any) -> None:
    e = sub.add_parser("export", help="export a run's LoRA for diffusers / ComfyUI, or one part of it")
    e.set_defaults(func=commands.cmd_export)
    e.add_argument("run", help="a run folder, or its setseq.safetensors")
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
    e.add_argument(
        "--out",
        required=True,
        help="the .safetensors file to write (--part both: two, OUT_identity and OUT_motion)",
    )
    e.add_argument("--identity-scale", type=float, help="identity strength baked in (unset: the run's, 1)")
    e.add_argument("--motion-scale", type=float, help="motion strength baked in (unset: the run's, 1)")
    e.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="the tensors' dtype"
    )


def _add_info(sub: Any) -> None:
    i = sub.add_parser("info", help="print what a run holds")
    i.set_defaults(func=commands.cmd_info)
    i.add_argument("run", help="a run folder, or a setseq.safetensors")


def _add_demo(sub: Any) -> None:
    d = sub.add_parser(
        "demo", help="personalize the shipped toy model to a shipped concept and show the results"
    )
    d.set_defaults(func=commands.cmd_demo)
    d.add_argument("--out", default="demo_out", help="folder for the videos, metrics and the run")
    d.add_argument("--concept", help="which shipped concept (unset: cyan_diamond_bounce)")
    d.add_argument("--quick", action="store_true", help="a few steps only (CI)")
    d.add_argument("--model", **TOY_MODEL)
    d.add_argument(
        "--ceiling-cache",
        help="JSON file of the base model's ceilings, read and extended (default ~/.cache/setseq/base_ceiling.json)",
    )


def _add_eval(sub: Any) -> None:
    v = sub.add_parser("eval", help="score generated videos against the reference (MSE, ID, C-T, TC, motion)")
    v.set_defaults(func=commands.cmd_eval)
    v.add_argument("videos", nargs="+", help="generated videos")
    v.add_argument(
        "--reference",
        required=True,
        help="a run folder: its training clip, the frames it trained on (as `setseq report` shows them); or a "
        "video: all its frames",
    )
    v.add_argument("--out", required=True, help="folder for metrics.json")
    v.add_argument(
        "--prompt",
        dest="prompts",
        metavar="PROMPT",
        action="append",
        help="edit prompt for C-T: one for all videos, or one per video",
    )
    v.add_argument("--clip", help="CLIP folder or cached hub id (default ~/.cache/setseq/clip)")
    v.add_argument("--dino", help="DINOv2 folder or cached hub id, for ID without faces")
    v.add_argument("--arcface", help="ArcFace .onnx file for ID on faces (needs onnxruntime)")
    v.add_argument(
        "--metrics", type=lambda s: [m for m in s.split(",") if m], help="e.g. mse,motion (unset: all)"
    )
    v.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_bench(sub: Any) -> None:
    b = sub.add_parser(
        "bench", help="the method and the paper's baselines x toy concepts x seeds: the ablation table"
    )
    b.set_defaults(func=commands.cmd_bench)
    b.add_argument("--out", default="bench_out", help="folder for bench.json, bench.md and the videos")
    b.add_argument("--quick", action="store_true", help="2 concepts, 1 seed, 4 + 4 steps (CI)")
    b.add_argument("--methods", type=_csv, help="comma-separated (default: all): setseq,dreambooth,...")
    b.add_argument("--concepts", type=_csv, help="comma-separated concept names (default: the whole suite)")
    b.add_argument("--seeds", type=int, default=2, help="how many training seeds per concept")
    b.add_argument("--first-seed", type=int, default=0, help="the first training seed; e.g. 1 to add a seed")
    b.add_argument("--suite", help="concept suite JSON (default: the shipped concepts)")
    b.add_argument("--model", **TOY_MODEL)
    b.add_argument("--keep-runs", action="store_true", help="keep each run's checkpoints and cache")
    b.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many runs at a time, the CPU threads split between them (2 on 2 cores: ~1.5x)",
    )
    b.add_argument(
        "--ceiling-cache",
        help="JSON file of the base model's ceilings, read and extended (default ~/.cache/setseq/base_ceiling.json)",
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
        "cogvideox-5b, ltx, hunyuan, hunyuan-1.5, ltx-2)",
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
    b.add_argument(
        "--fsdp-offload",
        action="store_true",
        help="--shape: model.fsdp_offload=true (every DiT weight in host memory, copied in by FSDP2)",
    )
    b.add_argument(
        "--procs",
        type=int,
        metavar="P",
        help="--shape: launch P processes (torchrun) that each time the steps, the DiT sharded across them "
        "(model.fsdp=true) when P > 1; step time and peak memory per process",
    )
    b.add_argument(
        "--replicate",
        action="store_true",
        help="--procs: each process holds the whole DiT and the LoRA gradients are all-reduced (FSDP2's "
        "replicate, model.fsdp=false) instead of sharding it",
    )


def _add_report(sub: Any) -> None:
    r = sub.add_parser("report", help="write a self-contained HTML report of a run or a demo folder")
    r.set_defaults(func=commands.cmd_report)
    r.add_argument("run", help="a run folder, or a demo folder (with run/ and the videos)")
    r.add_argument("--out", required=True, help="the .html file to write")
    r.add_argument(
        "--videos", help="folder with the videos (default: the demo folder, or the run's samples/)"
    )
    r.add_argument("--metrics", help="metrics.json to show (default: VIDEOS/metrics.json if present)")


def _add_mask(sub: Any) -> None:
    m = sub.add_parser(
        "mask", help="make a subject mask of a video from a word (text-prompted video segmentation)"
    )
    m.set_defaults(func=commands.cmd_mask)
    m.add_argument("video", help="the video to segment")
    m.add_argument("--prompt", required=True, help="the word that names the subject, e.g. person, dog")
    m.add_argument(
        "--out",
        required=True,
        help="a folder of per-frame PNG masks (lossless), or a .mp4/.mkv mask video: what --mask takes",
    )
    m.add_argument(
        "--segmenter",
        default="facebook/sam2.1-hiera-large",
        help="SAM 2 / 2.1 video (with --detector), or SAM 3 video: local folder or hub id",
    )
    m.add_argument(
        "--detector",
        default="IDEA-Research/grounding-dino-base",
        help="Grounding DINO: the prompt's first box, for a SAM 2 segmenter",
    )
    m.add_argument("--threshold", type=float, default=0.35, help="the detection score the subject needs")
    m.add_argument("--start", type=float, default=0.0, help="segment from this time (seconds)")
    m.add_argument("--end", type=float, help="... to this time (default: the end); other frames are black")
    m.add_argument("--device", **DEVICE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="setseq",
        description="Set-and-Sequence: personalize a text-to-video DiT to a dynamic concept from one video.",
    )
    sub = p.add_subparsers(dest="command", required=True)  # (each subcommand's parser is a _Parser too)
    for add in (
        _add_train,
        _add_generate,
        _add_compose,
        _add_export,
        _add_info,
        _add_demo,
        _add_eval,
        _add_bench,
        _add_report,
        _add_mask,
    ):
        add(sub)
    p.subcommands = sub.choices  # type: ignore[attr-defined]
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """argv -> the subcommand's fields by name, `func` (the `cmd_*` function) and `command` included.

    Two liberties argparse does not take by itself: key=value overrides anywhere after a subcommand that
    has them (`train`, `bench`), between flags too; and `eval`'s videos before and after its options."""
    args, extra = parser.parse_known_args(argv)
    if args.command == "eval":
        args.videos = list(args.videos) + [a for a in extra if not a.startswith("-")]
        extra = [a for a in extra if a.startswith("-")]
    takes_overrides = hasattr(args, "overrides")
    stray = [a for a in extra if not takes_overrides or a.startswith("-") or "=" not in a]
    if stray:  # (the subcommand's parser, whose flags a "did you mean" picks from)
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(stray)}")  # type: ignore[attr-defined]
    if takes_overrides:
        args.overrides = list(args.overrides) + extra
    return vars(args)


def _resume_fields(fields: dict[str, Any]) -> None:
    """`train --resume [RUN]`: the run folder into `out` (RUN and --out must agree when both are given), an
    override that argparse took for RUN back among the overrides; then refuse any flag or override that
    `--resume` does not take, by name."""
    run = fields["resume"]
    if isinstance(run, str) and "=" in run and not Path(run).exists():  # `--resume --out R stage1.lr=1e-5`
        fields["overrides"], run = [run, *fields["overrides"]], True
    if isinstance(run, str):
        if fields["out"] is not None and Path(fields["out"]).resolve() != Path(run).resolve():
            raise SetseqError(
                f"--resume {run} and --out {fields['out']} name two different run folders",
                f"give the run once: `setseq train --resume {shlex.quote(run)}`",
            )
        fields["out"] = run
    fields["resume"] = True
    if fields["out"] is None:
        raise SetseqError("--resume needs the run folder", "name it: `setseq train --resume RUN`")
    named = [
        f"--{k.replace('_', '-')}"
        for k, v in fields.items()
        if k not in (*RESUME_TAKES, "overrides") and v is not None
    ] + [o for o in fields["overrides"] if o.partition("=")[0] not in RESUME_KEYS]
    if named:
        raise SetseqError(
            f"--resume continues a run with its saved config; other flags are not allowed with it "
            f"(got {', '.join(named)})",
            f"drop them (it takes --video, --model, --mask and {', '.join(RESUME_KEYS)}), or start a new run "
            "with --init-lora",
        )


def main(argv: list[str] | None = None) -> int:
    fields = _parse(build_parser(), argv)
    func = fields.pop("func")
    del fields["command"]
    try:
        if fields.get("resume"):  # train --resume
            _resume_fields(fields)
        elif func is commands.cmd_train and fields["out"] is None:
            raise SetseqError("train needs a run folder", "pass --out RUN (a new folder)")
        func(**fields)
    except SetseqError as exc:
        print(f"setseq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("setseq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_left()
    return 0


def _reader_left() -> int:
    """The reader of our output closed it (`setseq info RUN | head -1`): stop quietly, with the status of a
    command ended by SIGPIPE, as well-behaved CLIs do. Python's own flush of stdout at exit would fail
    again, so stdout is pointed at /dev/null first (the recipe of Python's `signal` documentation)."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
