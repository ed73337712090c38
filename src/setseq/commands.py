"""What each `setseq` subcommand does: one typed function per subcommand, whose parameters are its flags.

Each parameter declares its flag once, in its `Annotated` type (`setseq.flags.Arg`: help, default, config
key); the first line of the docstring is the subcommand's help. `setseq.cli` builds the parser from these
signatures and calls the function with the parsed values as keyword arguments.
The imports of torch, diffusers and the modules that load them sit inside the functions: `setseq --help`
imports this module and must stay instant.
"""

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from setseq.errors import SetseqError
from setseq.flags import RESUME_KEYS, Arg, config_flags, csv_of, parse_csv, parse_size
from setseq.names import FAMILIES, METHODS

# Flags several subcommands share, word for word.
Seed = Annotated[int, Arg("sampling seed (the same seed gives the same video)", 0)]
Device = Annotated[str, Arg("auto (a GPU when there is one), cpu, cuda or cuda:N", "auto")]
InferDtype = Annotated[
    Literal["auto", "float32", "bfloat16", "float16"],
    Arg(
        "auto: the run's training dtype, else bfloat16 on a GPU (float32 for the toy model and on CPU)",
        "auto",
    ),
]
Fps = Annotated[
    float | None,
    Arg("frame rate of the written video (default: the run's, i.e. its clip's; else the backbone's)", None),
]
Cfg = Annotated[float | None, Arg("classifier-free guidance scale (unset: the run's or backbone's)", None)]
SampleSteps = Annotated[int | None, Arg("sampling steps (unset: the backbone's)", None)]
ToyModel = Annotated[str, Arg("toy model: toy, toy-large, or a toy model folder", "toy")]
CeilingCache = Annotated[
    str | None,
    Arg(
        "JSON file of the base model's ceilings, read and extended (default ~/.cache/setseq/base_ceiling.json)",
        None,
    ),
]
Run = Annotated[str, Arg("a run folder, or its setseq.safetensors", positional=True)]
BlockSwap = Annotated[
    int,
    Arg(
        "keep the linear weights of the DiT's last N blocks in host memory (a model larger than the GPU)",
        0,
        metavar="N",
    ),
]


# cmd_train's flags that take more than a line to declare (the shorter ones are declared in place).
TrainVideo = Annotated[
    str | None, Arg("the input video (any container PyAV reads)", None, key="data.video", resume=True)
]
TrainOut = Annotated[
    str | None,
    Arg(
        "run folder: a new one (or one of only a run's own files); required, except that --resume RUN names it",
        None,
        resume=True,
    ),
]
TrainModel = Annotated[
    str | None,
    Arg(
        "'toy', 'toy-large', or a diffusers checkpoint of a family --backbone names: local folder or hub id",
        None,
        key="model.path",
        resume=True,
    ),
]
TrainBackbone = Annotated[
    str | None,
    Arg(
        f"backbone family: {', '.join(FAMILIES)} (given --model: read from its folder's "
        "model_index.json; wan for a hub id)",
        None,
        key="model.backbone",
    ),
]
TrainAction = Annotated[
    str | None, Arg("coarse action words for T_motion, e.g. 'dancing'", None, key="concept.action")
]
TrainCamera = Annotated[
    str | None, Arg("camera words for T_motion, e.g. 'static camera'", None, key="concept.camera")
]
TrainConfigFile = Annotated[
    str | None,
    Arg(
        "a YAML run config, or a shipped recipe's name: toy-demo (the default on a toy model), "
        "wan2.1-t2v-1.3b, wan2.1-t2v-14b",
        None,
    ),
]
TrainFrames = Annotated[
    int | None, Arg("clip length (4k+1 for Wan; unset: the backbone's)", None, key="data.frames")
]
TrainFps = Annotated[
    float | None, Arg("resample the video to this frame rate (unset: the source's)", None, key="data.fps")
]
TrainEnd = Annotated[
    float | None, Arg("end time in seconds (unset: the end of the video)", None, key="data.end")
]
TrainSize = Annotated[
    list[int] | None,
    Arg("HxW, e.g. 480x832 (unset: the backbone's)", None, key="data.size", type=parse_size),
]
TrainMask = Annotated[
    str | None,
    Arg(
        "subject mask: a mask video or a folder of per-frame masks (white = subject), same frames and size "
        "as the video, or 'auto' to make one from --mask-prompt (setseq mask); with a mask the stages swap "
        "backgrounds (stage1.background_swap=1, stage2.background_swap=0.25) unless a mask option is set; "
        "an auto mask's edge is feathered by 1 px (data.mask_feather)",
        None,
        key="data.mask",
        resume=True,
    ),
]
TrainMaskPrompt = Annotated[
    str | None,
    Arg(
        "--mask auto: the word that names the subject (default: the class word)",
        None,
        key="data.mask_prompt",
    ),
]
TrainResume = Annotated[
    str | bool,
    Arg(
        "continue the run in RUN (or --out) exactly (optimizer, step, RNG); takes --video, --model and "
        f"--mask to point to moved inputs (checked to be the same), and the overrides {', '.join(RESUME_KEYS)}",
        False,
        resume=True,
        nargs="?",
        const=True,
        metavar="RUN",
    ),
]
TrainMethod = Annotated[
    str | None, Arg(f"setseq or a baseline: {', '.join(list(METHODS)[1:])}", None, key="method")
]
TrainProgress = Annotated[
    bool,
    Arg(
        "no progress bar: a plain line every train.progress_every steps instead (as when the output is "
        "not a terminal)",
        True,
        flag="--no-progress",
        resume=True,
    ),
]
TrainOverrides = Annotated[
    list[str],
    Arg(
        "dotted key=value config overrides, e.g. stage1.steps=600 (see --list-keys)",
        positional=True,
        nargs="*",
    ),
]


def cmd_train(
    *,
    video: TrainVideo,
    out: TrainOut,
    model: TrainModel,
    backbone: TrainBackbone,
    token: Annotated[str | None, Arg("concept token [v]", None, key="concept.token")],
    class_word: Annotated[str | None, Arg("class word, e.g. person", None, key="concept.class_word")],
    action: TrainAction,
    camera: TrainCamera,
    config: TrainConfigFile,
    frames: TrainFrames,
    fps: TrainFps,
    start: Annotated[float | None, Arg("start time in seconds", None, key="data.start")],
    end: TrainEnd,
    size: TrainSize,
    mask: TrainMask,
    mask_prompt: TrainMaskPrompt,
    resume: TrainResume,
    init_lora: Annotated[str | None, Arg("start a NEW run from the weights of a setseq.safetensors", None)],
    method: TrainMethod,
    progress: TrainProgress,
    overrides: TrainOverrides,
) -> Path:
    """Personalize a model to one video (stage 1 + stage 2).

    With `resume`, continue the run in `out`: `setseq.cli` has refused every flag and override it does not
    take. Each other flag that was given sets its config key (`Arg.key`), under the `key=value` overrides.
    """
    flags = config_flags(cmd_train, locals())  # (first: locals() holds the parameters alone)
    from setseq.config_load import resolve_train_config
    from setseq.runtime import quiet_libraries
    from setseq.train.distributed import close_processes
    from setseq.train.outputs import check_out_folder

    quiet_libraries()
    try:
        if resume:
            from setseq.train.setup import resumed_config

            cfg = resumed_config(Path(out), video=video, model=model, mask=mask, overrides=overrides)
            return _run_training(cfg, out, resume=True, progress=progress)
        if model is not None and backbone is None:
            from setseq.backbones.registry import guess_backbone

            flags["model"]["backbone"] = guess_backbone(model)
        check_out_folder(Path(out))  # (before the config's notes: a refusal stays one line)
        cfg = resolve_train_config(config, flags, overrides)  # (a toy model: the toy recipe by default)
        return _run_training(cfg, out, init_lora=init_lora, progress=progress)
    finally:
        close_processes()  # under a launcher: leave the process group before the interpreter's teardown


def _run_training(
    cfg: Any, out: str, *, resume: bool = False, init_lora: str | None = None, progress: bool
) -> Path:
    """The one call from the command line into training, a new run or a resumed one (LEAD: the place where
    `Recipe(cfg)` / `Recipe.from_run(out)` of branch r32core goes)."""
    from setseq.train.run import train

    if resume:
        return train(cfg, out, resume=True, progress=progress)
    return train(cfg, out, init_lora=init_lora, progress=progress)


def cmd_generate(
    *,
    run: Annotated[
        str | None,
        Arg(
            "run folder or setseq.safetensors (omit for the base model alone)",
            None,
            positional=True,
            nargs="?",
        ),
    ],
    prompts: Annotated[
        list[str], Arg("prompt (repeat for several)", flag="--prompt", action="append", metavar="PROMPT")
    ],
    out: Annotated[str, Arg("output .mp4 (a .png contact sheet is written beside it)")],
    image: Annotated[
        str | None,
        Arg(
            "first frame (PNG, JPEG) for image-to-video: needs an image-to-video --model (Wan I2V, Wan 2.2 "
            "TI2V-5B); resized and centre-cropped to the video's size",
            None,
        ),
    ],
    model: Annotated[str | None, Arg("base model (default: the run's own model, else toy)", None)],
    backbone: Annotated[
        str | None, Arg("the base model's family, when --model does not say (as train --backbone)", None)
    ],
    identity_scale: Annotated[
        float | None, Arg("strength of the identity LoRA (unset: the run's, 1; 0: off)", None)
    ],
    motion_scale: Annotated[
        float | None, Arg("strength of the motion residual (unset: the run's, 1; 0: off)", None)
    ],
    cfg: Cfg,
    steps: SampleSteps,
    seed: Seed,
    size: Annotated[
        list[int] | None, Arg("HxW, e.g. 480x832 (unset: the run's training size)", None, type=parse_size)
    ],
    frames: Annotated[int | None, Arg("frames per video (unset: the run's clip length)", None)],
    fps: Fps,
    negative_prompt: Annotated[str, Arg("what the guidance steers away from", "")],
    device: Device,
    dtype: InferDtype,
    block_swap: BlockSwap,
) -> list[Path]:
    """Generate videos with a run (or the base model alone).

    The run's LoRA on its model, or the base model alone; with `image`, from that first frame on an
    image-to-video model."""
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
    runs: Annotated[
        list[str],
        Arg("one multi-concept run, or several runs (their LoRAs are summed)", positional=True, nargs="+"),
    ],
    prompts: Annotated[
        list[str],
        Arg("a prompt naming two or more concept tokens", flag="--prompt", action="append", metavar="PROMPT"),
    ],
    out: Annotated[str, Arg("output .mp4")],
    weights: Annotated[list[float] | None, Arg("one per run, e.g. 1,0.8", None, type=csv_of(float))],
    model: Annotated[str | None, Arg("base model (default: the first run's)", None)],
    cfg: Cfg,
    steps: SampleSteps,
    seed: Seed,
    fps: Fps,
    device: Device,
    dtype: InferDtype,
) -> list[Path]:
    """Generate several concepts together: a jointly trained run, or a weighted sum of runs."""
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
    run: Run,
    format: Annotated[
        Literal["diffusers", "comfyui", "identity", "motion"],
        Arg("key layout; identity / motion are aliases of diffusers --part identity / motion"),
    ],
    part: Annotated[
        Literal["merged", "identity", "motion", "both"] | None,
        Arg(
            "merged: identity + motion in one LoRA (diffusers' default); identity or motion alone; both: two "
            "files OUT_identity and OUT_motion, to load as two LoRAs with their own strengths (comfyui's default)",
            None,
        ),
    ],
    expert: Annotated[
        Literal["high", "low"] | None, Arg("Wan 2.2 A14B: which expert's LoRA (one file each)", None)
    ],
    out: Annotated[
        str, Arg("the .safetensors file to write (--part both: two, OUT_identity and OUT_motion)")
    ],
    identity_scale: Annotated[float | None, Arg("identity strength baked in (unset: the run's, 1)", None)],
    motion_scale: Annotated[float | None, Arg("motion strength baked in (unset: the run's, 1)", None)],
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], Arg("the tensors' dtype", "float32")],
) -> list[Path]:
    """Export a run's LoRA for diffusers / ComfyUI, or one part of it.

    Identity and motion merged, one part, or both parts as two files (ComfyUI's default; Wan 2.2 A14B: one
    `expert` per file)."""
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


def cmd_info(*, run: Run) -> dict[str, Any]:
    """Print what a run holds (a run folder, or a setseq.safetensors file)."""
    from setseq.info import describe_run

    text, data = describe_run(Path(run))
    print(text)
    return data


def cmd_eval(
    *,
    videos: Annotated[list[str], Arg("generated videos", positional=True, nargs="+")],
    reference: Annotated[
        str,
        Arg(
            "a run folder: its training clip, the frames it trained on (as `setseq report` shows them); or a "
            "video: all its frames"
        ),
    ],
    out: Annotated[str, Arg("folder for metrics.json")],
    prompts: Annotated[
        list[str] | None,
        Arg(
            "edit prompt for C-T: one for all videos, or one per video",
            None,
            flag="--prompt",
            action="append",
            metavar="PROMPT",
        ),
    ],
    clip: Annotated[str | None, Arg("CLIP folder or cached hub id (default ~/.cache/setseq/clip)", None)],
    dino: Annotated[str | None, Arg("DINOv2 folder or cached hub id, for ID without faces", None)],
    arcface: Annotated[str | None, Arg("ArcFace .onnx file for ID on faces (needs onnxruntime)", None)],
    metrics: Annotated[list[str] | None, Arg("e.g. mse,motion (unset: all)", None, type=parse_csv)],
    progress: Annotated[bool, Arg("no progress bar", True, flag="--no-progress")],
) -> Path:
    """Score generated videos against the reference (MSE, ID, C-T, TC, motion).

    MSE, ID, C-T and TC are the paper's metrics, motion is ours."""
    from setseq.eval.run_eval import evaluate
    from setseq.runtime import quiet_libraries

    quiet_libraries()
    return evaluate(reference, videos, out, prompts, clip, dino, arcface, metrics, progress=progress).path


def cmd_mask(
    *,
    video: Annotated[str, Arg("the video to segment", positional=True)],
    prompt: Annotated[str, Arg("the word that names the subject, e.g. person, dog")],
    out: Annotated[
        str, Arg("a folder of per-frame PNG masks (lossless), or a .mp4/.mkv mask video: what --mask takes")
    ],
    segmenter: Annotated[
        str,
        Arg(
            "SAM 2 / 2.1 video (with --detector), or SAM 3 video: local folder or hub id",
            "facebook/sam2.1-hiera-large",
        ),
    ],
    detector: Annotated[
        str,
        Arg(
            "Grounding DINO: the prompt's first box, for a SAM 2 segmenter",
            "IDEA-Research/grounding-dino-base",
        ),
    ],
    threshold: Annotated[float, Arg("the detection score the subject needs", 0.35)],
    start: Annotated[float, Arg("segment from this time (seconds)", 0.0)],
    end: Annotated[float | None, Arg("... to this time (default: the end); other frames are black", None)],
    device: Device,
) -> Path:
    """Make a subject mask of a video from a word (text-prompted video segmentation).

    Per-frame PNGs (or a mask video): what `train --mask` takes."""
    from setseq.data.segment import SegmenterSpec, write_mask
    from setseq.runtime import quiet_libraries, resolve_device

    if not 0.0 <= threshold <= 1.0:
        raise SetseqError(f"--threshold must be in [0, 1], got {threshold}", "pass e.g. --threshold 0.3")
    quiet_libraries()
    spec = SegmenterSpec(segmenter, detector, threshold)
    return write_mask(video, prompt, out, spec, resolve_device(device), start=start, end=end)
