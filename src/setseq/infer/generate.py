"""`setseq generate`: text-to-video (or image-to-video, `--image`) with a personalized run (or the base model
alone), with separate identity and motion scales. Writes an mp4 and a PNG contact sheet per prompt.

Image-to-video: the run's LoRA goes on the image-to-video model exactly as on a text-to-video one (its modules
by name); the image is the first frame, resized and centre-cropped to the video's size like a training video.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from setseq import lora as L
from setseq.backbones.base import Backbone, check_image_input
from setseq.backbones.registry import families, guess_backbone
from setseq.backbones.toy.files import SHIPPED_TOY_MODELS, shipped_toy_with_fingerprint
from setseq.data.image import fit_image
from setseq.data.video import from_tensor, write_contact_sheet, write_video
from setseq.errors import SetseqError
from setseq.export import SetseqLora, check_compatible, load_setseq
from setseq.offload import load_backbone_swapped
from setseq.runtime import DTYPES, resolve_device
from setseq.train.embeddings import load_embeddings


def pick_dtype(dtype: str, meta: dict, backbone: str, device: torch.device) -> str:
    """`dtype`, or for "auto" the one the LoRA was trained in (its metadata), else bfloat16 for a real
    backbone on a GPU and float32 otherwise (the toy model, CPU)."""
    if dtype != "auto":
        return dtype
    trained = meta.get("dtype")
    if trained in DTYPES:
        return str(trained)
    return "bfloat16" if device.type == "cuda" and backbone != "toy" else "float32"


def default_fps(backbone: str) -> float:
    """The frame rate a backbone's videos play at when nothing else says (`Family.fps`); 16 for a family
    that is not registered here."""
    known = {f.name: f.fps for f in families()}
    return known.get(backbone, 16.0)


def names_folder(model_id: str) -> bool:
    """Whether a model id names a local folder rather than a hub id ("owner/name") or a shipped toy model:
    absolute, `./` or `~` led, or not of two parts. Tells a run's moved (or relative) model folder from a
    hub id, so that a missing folder is never looked up on the hub."""
    if model_id in SHIPPED_TOY_MODELS:
        return False
    p = Path(model_id).expanduser()
    return p.is_absolute() or model_id.startswith((".", "~")) or len(p.parts) != 2


def check_run_model(model_id: str, run: str | Path) -> None:
    """The model folder a run names must be here: refused in one line otherwise (never tried on the hub)."""
    if not names_folder(model_id) or Path(model_id).expanduser().exists():
        return
    relative = not Path(model_id).expanduser().is_absolute()
    raise SetseqError(
        f"the model folder {model_id} that {run} was trained on is not here"
        + (" (the run named it relative to the directory it was trained in)" if relative else ""),
        f"pass the folder with --model, e.g. --model /path/to/{Path(model_id).name}",
    )


@dataclass
class GenerateOptions:
    """Sampling options; None means the run's (or the backbone's) default."""

    identity_scale: float | None = None
    motion_scale: float | None = None
    guidance_scale: float | None = None
    steps: int | None = None
    seed: int = 0
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""
    fps: float | None = (
        None  # the written videos' frame rate; None: the run's (its clip's), else the backbone's
    )
    # The first frame for image-to-video, (H, W, 3) uint8 at any size (`setseq.data.image.read_image`); it is
    # resized and centre-cropped to the video's size. None: text-to-video.
    image: np.ndarray | None = None


@dataclass
class GeneratedVideo:
    prompt: str
    video: torch.Tensor  # (F, 3, H, W) in [-1, 1]
    mp4: Path | None = None
    png: Path | None = None


class Personalized:
    """A backbone with a setseq LoRA applied (or none), ready to generate."""

    def __init__(self, backbone: Backbone, lora: SetseqLora | None) -> None:
        self.backbone = backbone
        self.lora = lora
        self.run_fps: float | None = None  # the frame rate of runs merged into the weights (compose)
        if lora is not None:
            # The file's own tensor names say where its LoRA goes: exact names, so no pattern from a file
            # is ever compiled (its `targets` metadata is kept as information only).
            linears = {n for n, m in backbone.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
            missing = [m for m in lora.modules if m not in linears]
            if missing:
                raise SetseqError(
                    f"the LoRA has {len(missing)} modules this model does not have (e.g. {missing[0]!r})",
                    "use a LoRA trained on this model, or generate with its own --model",
                )
            exact = tuple(f"^{re.escape(m)}$" for m in lora.modules)
            spec = L.LoraSpec(lora.rank, lora.alpha, lora.basis, exact)  # type: ignore[arg-type]
            L.inject(backbone.transformer, spec)
            L.load_state(backbone.transformer, lora.tensors)
            L.set_stage(backbone.transformer, 0)
        backbone.transformer.eval()

    @classmethod
    def load(
        cls,
        run: str | Path | None = None,
        model: str | None = None,
        backbone: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        log: Callable[[str], None] = print,
        block_swap: int = 0,
    ) -> Personalized:
        """From a run folder (or a setseq.safetensors file) on its own model, or `model` alone. `block_swap`:
        the DiT's last N blocks keep their linear weights in host memory (setseq.offload). `dtype` "auto": the
        dtype the run trained in, else bfloat16 for a real model on a GPU, float32 otherwise."""
        lora = load_setseq(run) if run is not None else None
        path = model or (lora.meta.get("model_id") if lora else None) or "toy"
        if lora is not None and not model:
            check_run_model(path, run)  # type: ignore[arg-type]
        if lora is not None and not model and path not in SHIPPED_TOY_MODELS:
            log(f"base model: {path} (named by the LoRA file; --model chooses another)")
        name = backbone or (lora.meta["backbone"] if lora and not model else None) or guess_backbone(path)
        dev = resolve_device(device)
        dtype = pick_dtype(dtype, lora.meta if lora is not None else {}, name, dev)
        bb = load_backbone_swapped(name, path, dev, DTYPES[dtype], block_swap)
        fingerprint = lora.meta.get("fingerprint") if lora is not None else None
        if bb.info.name == "toy" and not bb.info.accepts(fingerprint):
            # a run from before the default toy model changed: name (or, unasked, load) the one it was trained on
            other = shipped_toy_with_fingerprint(str(fingerprint), skip=path)
            if other and not model:
                log(
                    f"base model: {other} (the LoRA was trained on it; until 2026-11-29 'toy' named that model)"
                )
                path = other
                bb = load_backbone_swapped(name, path, dev, DTYPES[dtype], block_swap)
            elif other:
                log(
                    f"warning: {run} was trained on the shipped '{other}' model: generate with --model {other}"
                )
        if lora is not None:
            for w in check_compatible(lora, bb.info, run or "the LoRA"):
                log(f"warning: {w}")
            # learned token embeddings (concept.train_embedding / method=textual_inversion) beside the LoRA
            folder = Path(run) if Path(run).is_dir() else Path(run).parent  # type: ignore[arg-type]
            tokens = load_embeddings(bb, folder)
            if tokens:
                log(f"token embeddings: {', '.join(tokens)} from {folder}")
        return cls(bb, lora)

    def size(self, opts: GenerateOptions) -> tuple[int, int]:
        """(H, W) of the videos: `opts`, else the run's training size, else the backbone's default."""
        size = self.lora.meta.get("size") if self.lora else None
        return (
            int(opts.height or (size[0] if size else self.backbone.info.height)),
            int(opts.width or (size[1] if size else self.backbone.info.width)),
        )

    def fps(self, opts: GenerateOptions) -> float:
        """The frame rate of the videos: `opts.fps`, else the run's (the rate its clip was sampled at, or the
        source's), else the backbone's usual one."""
        if opts.fps is not None:
            if not (math.isfinite(opts.fps) and 0 < opts.fps <= 1000):
                raise SetseqError(
                    f"--fps must be a frame rate in (0, 1000], got {opts.fps:g}", "pass e.g. --fps 16"
                )
            return float(opts.fps)
        run = self.lora.meta.get("fps") if self.lora is not None else self.run_fps
        return float(run) if run else default_fps(self.backbone.info.name)

    def frames(self, opts: GenerateOptions) -> int | None:
        """The videos' frame count: `opts.frames`, else the run's clip length (None: the backbone's default);
        one the backbone cannot make is refused naming the nearest it can."""
        frames = (
            opts.frames if opts.frames is not None else (self.lora.meta.get("frames") if self.lora else None)
        )
        if frames is None:
            return None
        info = self.backbone.info
        m, default = info.frame_multiple, info.frames
        if frames < 1:
            raise SetseqError(f"--frames must be at least 1, got {frames}", f"use e.g. --frames {default}")
        if (frames - 1) % m:
            lo = (frames - 1) // m * m + 1
            raise SetseqError(
                f"--frames {frames} is not of the form {m}k+1 that the {info.name} backbone makes",
                f"use --frames {lo} or {lo + m}",
            )
        return int(frames)

    def first_frame(
        self, opts: GenerateOptions, log: Callable[[str], None] | None = None
    ) -> np.ndarray | None:
        """`opts.image` fitted to the video's size, or None for text-to-video; refuses an image the model cannot
        take (a text-to-video-only model, a size it cannot make) and a missing one that it needs."""
        info = self.backbone.info
        check_image_input(info, opts.image is not None)
        if opts.image is None:
            return None
        image, note = fit_image(opts.image, self.size(opts), info.spatial_multiple, info.model_id)
        if log is not None:
            log(note)
        return image

    def generate(self, prompt: str, opts: GenerateOptions, progress: bool = False) -> torch.Tensor:
        image = self.first_frame(opts)
        if self.lora is not None:
            ids = self.lora.identity_tokens  # a multi-concept run's: any one concept's will do
            if ids and not set(ids) & set(prompt.split()):
                named = " or ".join(f"'{t}'" for t in ids)
                print(
                    f"warning: the prompt {prompt!r} does not contain the concept token {named}: the concept may not appear",
                    file=sys.stderr,
                )
            L.set_scales(
                self.backbone.transformer,
                identity=self.lora.meta.get("identity_scale", 1.0)
                if opts.identity_scale is None
                else opts.identity_scale,
                motion=self.lora.meta.get("motion_scale", 1.0)
                if opts.motion_scale is None
                else opts.motion_scale,
            )
        default_cfg = self.lora.meta.get("guidance_scale") if self.lora else None
        height, width = self.size(opts)
        return self.backbone.generate(
            prompt,
            opts.negative_prompt,
            frames=self.frames(opts),
            height=height,
            width=width,
            steps=opts.steps,
            guidance_scale=default_cfg if opts.guidance_scale is None else opts.guidance_scale,
            seed=opts.seed,
            progress=progress,
            image=image,
        )


def output_paths(out: Path, n: int) -> list[Path]:
    if out.suffix.lower() not in (".mp4", ".mkv", ".webm", ".mov"):
        raise SetseqError(f"--out {out} must name a video file", "use a name ending in .mp4")
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:02d}{out.suffix}") for i in range(n)]


def generate_to_files(
    model: Personalized, prompts: list[str], opts: GenerateOptions, out: str | Path, progress: bool = True
) -> list[GeneratedVideo]:
    """Generate each prompt; write `<out>` (mp4) and `<out>.png` (contact sheet), numbered if several."""
    if not prompts:
        raise SetseqError("no prompt was given", 'pass --prompt "a sks person ..."')
    paths = output_paths(Path(out), len(prompts))
    model.first_frame(opts, log=lambda s: print(s, file=sys.stderr))  # refuse a wrong --image before writing
    fps = model.fps(opts)
    model.frames(opts)  # refuse a wrong --frames before the first video
    results = []
    for prompt, path in zip(prompts, paths):
        video = model.generate(prompt, opts, progress=progress)
        frames = from_tensor(video)
        write_video(path, frames, fps=fps)
        png = path.with_suffix(".png")
        write_contact_sheet(png, frames)
        results.append(GeneratedVideo(prompt, video, path, png))
    return results
