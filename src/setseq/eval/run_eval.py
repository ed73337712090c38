"""`setseq eval`: score generated videos against the reference video with the paper's metrics + motion.

1. check the inputs (reference and videos exist, one prompt or one per video, known metric names);
2. load the reference (a run folder: the clip it trained on, sampled as it was, the frames `setseq report`
   shows; a video: all its frames; the table and metrics.json say which) and the metric models that the chosen metrics need (CLIP; ArcFace or DINO for ID
   when given, else CLIP image similarity, said in the notes);
3. per generated video: MSE on the video resampled to the reference's frames and size (a note says so),
   ID / C-T / TC on its own frames (resampling would repeat frames and inflate TC), motion on both videos'
   own frames (the tracks are compared over normalised time);
4. print a table and write ``OUT/metrics.json`` (atomically).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open
from tqdm.auto import tqdm

from setseq.data.video import load_clip
from setseq.errors import SetseqError
from setseq.eval import metrics as M
from setseq.eval import models
from setseq.eval.motion import describe_motion, motion_similarity
from setseq.io import write_json

__all__ = ["ALL_METRICS", "EvalResult", "evaluate", "format_table", "trained_clip"]

#: Metric names for --metrics, in table order.
ALL_METRICS: tuple[str, ...] = ("mse", "id", "clip_t", "tc", "motion")
_ALIASES = {"ct": "clip_t", "c-t": "clip_t", "clip-t": "clip_t", "identity": "id"}
_HEADERS = {"mse": "MSE", "id": "ID", "clip_t": "C-T", "tc": "TC", "motion": "motion"}


@dataclass
class EvalResult:
    """What `setseq eval` wrote to metrics.json."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)


def _check_inputs(
    reference: str | Path, generated: Sequence[str | Path], prompts: Sequence[str] | None, metrics
) -> tuple[Path, list[Path], list[str | None], list[str]]:
    ref = Path(reference)
    if ref.is_dir() and not (ref / "config.yaml").is_file():
        raise SetseqError(
            f"reference {ref} is a folder but not a setseq run (no config.yaml)",
            "pass a run folder (its training clip) or the original video with --reference REF.mp4",
        )
    if not ref.exists():
        raise SetseqError(
            f"reference video {ref} does not exist", "pass the original video with --reference REF.mp4"
        )
    if not generated:
        raise SetseqError(
            "no generated videos to evaluate", "list them after the options: GEN1.mp4 GEN2.mp4 ..."
        )
    gens = [Path(g) for g in generated]
    for g in gens:
        if not g.is_file():
            raise SetseqError(
                f"generated video {g} does not exist", "check the paths of the videos to evaluate"
            )
    prompts = list(prompts or [])
    if len(prompts) not in (0, 1, len(gens)):
        raise SetseqError(
            f"{len(prompts)} --prompt for {len(gens)} videos",
            "give one --prompt for all videos, or one per video in the same order",
        )
    per_video: list[str | None] = (
        prompts * len(gens) if len(prompts) == 1 else (prompts or [None] * len(gens))
    )
    chosen = []
    for m in metrics or ALL_METRICS:
        name = _ALIASES.get(m.strip().lower(), m.strip().lower())
        if name not in ALL_METRICS:
            raise SetseqError(f"unknown metric {m!r}", f"use some of {','.join(ALL_METRICS)}")
        if name not in chosen:
            chosen.append(name)
    return ref, gens, per_video, [m for m in ALL_METRICS if m in chosen]


def trained_clip(run: Path) -> Any:
    """The clip a run trained on (`setseq.data.video.Clip`), sampled as it was: its config's fps, start and
    end, at the frame count and size it trained at (its LoRA's metadata; else its config's). None when the
    run names no video; refused in one line when the video is gone or unreadable."""
    try:
        data = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data") or {}
        video = data.get("video")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not video:
        return None
    if not Path(video).is_file():
        raise SetseqError(
            f"the run's training video {video} is gone", "pass the video itself with --reference VIDEO.mp4"
        )
    frames, size = data.get("frames"), data.get("size")
    try:
        with safe_open(str(run / "setseq.safetensors"), "pt") as f:
            md = f.metadata() or {}
        frames = json.loads(md.get("frames", "null")) or frames
        size = json.loads(md.get("size", "null")) or size
    except Exception:  # no LoRA file yet (a run still training): the config's sampling
        pass
    return load_clip(
        video,
        frames=int(frames) if frames else None,
        fps=data.get("fps"),
        start=float(data.get("start") or 0.0),
        end=data.get("end"),
        size=tuple(size) if size else None,
    )


def reference_frames(ref: Path) -> tuple[Any, str]:
    """(frames (F, H, W, 3), what they are) of `--reference`: a run's training clip, or a video's frames."""
    if ref.is_dir():
        clip = trained_clip(ref)
        if clip is None:
            raise SetseqError(
                f"run {ref} names no training video", "pass the video with --reference VIDEO.mp4"
            )
        what = f"the {len(clip.frames)} frames run {ref} trained on (sampled as it was, as `setseq report` shows)"
        return clip.frames, what
    frames = load_clip(ref).frames
    return frames, (
        f"all {len(frames)} frames of {ref} (a run trained on a sample of them: --reference RUN compares with "
        "those, as `setseq report` shows)"
    )


def _names(paths: list[Path]) -> list[str]:
    """Short unique names: the file stem, or the path where stems repeat."""
    stems = [p.stem for p in paths]
    return [p.stem if stems.count(p.stem) == 1 else str(p) for p in paths]


def _fmt(v: Any, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(data: dict[str, Any]) -> str:
    """The printed table of a metrics.json dict (eval format)."""
    cols = [m for m in ALL_METRICS if m in data.get("metrics", ALL_METRICS)]
    digits = {"mse": 4, "id": 3, "clip_t": 3, "tc": 4, "motion": 3}
    width = max([len("(reference)"), *(len(n) for n in data["videos"])])
    lines = [f"{'video':{width}s}" + "".join(f"{_HEADERS[c]:>9s}" for c in cols)]
    ref_row = {"tc": data.get("reference_tc")}
    lines.append(
        f"{'(reference)':{width}s}" + "".join(f"{_fmt(ref_row.get(c), digits[c]):>9s}" for c in cols)
    )
    for name in data.get("order") or list(data["videos"]):
        row = data["videos"][name]
        lines.append(f"{name:{width}s}" + "".join(f"{_fmt(row.get(c), digits[c]):>9s}" for c in cols))
    lines.append("better: MSE lower; ID, C-T, TC, motion higher")
    return "\n".join(lines)


@dataclass
class _Scorers:
    """The models the chosen metrics need, and the reference as they see it."""

    clip: Any  # CLIP (image and text embeddings), or None
    id: Any  # the identity model (ArcFace, DINOv2, or the CLIP above), or None
    id_method: str | None  # arcface | dino | clip
    ref_clip: Any = None  # the reference frames' CLIP embeddings
    ref_id: Any = None  # ... and identity embeddings
    ref_motion: Any = None  # the reference's point tracks (setseq.eval.motion)


def _load_scorers(
    chosen: list[str], clip: str | None, dino: str | None, arcface: str | None, notes: list[str]
) -> _Scorers:
    """Load only the models the chosen metrics need (a missing one names its download); say which ID model
    is used in `notes`."""
    need_clip = "clip_t" in chosen or "tc" in chosen or ("id" in chosen and not (arcface or dino))
    clip_m = models.load_clip(clip) if need_clip else None
    if "id" not in chosen:
        return _Scorers(clip_m, None, None)
    if arcface:
        id_m = models.load_arcface(arcface)
        notes.append(f"ID: ArcFace ({Path(id_m.name).name}) on each frame's centre square, no face detection")
        return _Scorers(clip_m, id_m, "arcface")
    if dino or (models.default_dir("dino") / "config.json").is_file():
        id_m = models.load_dino(dino)
        notes.append(f"ID: DINOv2 image similarity ({id_m.name}); no --arcface given")
        return _Scorers(clip_m, id_m, "dino")
    notes.append(f"ID: CLIP image similarity ({clip_m.name}); no --arcface or --dino given")
    return _Scorers(clip_m, clip_m, "clip")


def _see_reference(sc: _Scorers, ref: Any, chosen: list[str]) -> None:
    """The reference's embeddings and motion, once, for every video."""
    sc.ref_clip = sc.clip.images(ref) if sc.clip is not None else None
    if sc.id is not None:
        sc.ref_id = sc.ref_clip if sc.id_method == "clip" else sc.id.images(ref)
    sc.ref_motion = describe_motion(ref) if "motion" in chosen else None


def _score_video(gen: Any, ref: Any, prompt: str | None, sc: _Scorers, chosen: list[str]) -> dict[str, Any]:
    """One generated video's metrics (gen, ref: (F, H, W, 3) uint8)."""
    row: dict[str, Any] = {}
    if "mse" in chosen:
        row["mse"] = M.mse(gen, ref)
    emb = sc.clip.images(gen) if sc.clip is not None else None
    if "id" in chosen:
        g_id = emb if sc.id_method == "clip" else sc.id.images(gen)
        row["id"] = M.identity_similarity(g_id, sc.ref_id)
    if "clip_t" in chosen:
        row["clip_t"] = M.text_similarity(emb, sc.clip.texts([prompt])) if prompt else None
    if "tc" in chosen:
        row["tc"] = M.temporal_consistency(emb)
    if "motion" in chosen:
        mo = motion_similarity(gen, sc.ref_motion)
        row.update(motion=mo["similarity"], motion_distance=mo["distance"], motion_static=mo["static"])
    return row


def _header(
    ref_path: Path, ref_what: str, ref: Any, chosen: list[str], sc: _Scorers, notes: list[str]
) -> dict:
    """metrics.json's fields beside the videos' rows."""
    return {
        "reference": str(ref_path),
        "reference_frames": ref_what,  # which frames: a run's training clip, or all of a video's
        "frames": int(ref.shape[0]),
        "size": [int(ref.shape[1]), int(ref.shape[2])],
        "metrics": chosen,
        "models": {
            "clip": sc.clip.name if sc.clip else None,
            "id": sc.id.name if sc.id else None,
            "motion": "Lucas-Kanade point tracks (setseq.eval.motion; no model)"
            if "motion" in chosen
            else None,
        },
        "id_method": sc.id_method,
        "reference_tc": M.temporal_consistency(sc.ref_clip)
        if sc.ref_clip is not None and "tc" in chosen
        else None,
        "notes": notes,
        "order": [],  # the videos in the order given (json sorts the keys of "videos")
        "videos": {},
    }


def evaluate(
    reference: str | Path,
    generated: Sequence[str | Path],
    out: str | Path,
    prompts: Sequence[str] | None = None,
    clip: str | None = None,
    dino: str | None = None,
    arcface: str | None = None,
    metrics: Sequence[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvalResult:
    """Score `generated` videos against `reference`; write ``out/metrics.json``; print a table."""
    # 1. Inputs.
    ref_path, gens, per_video, chosen = _check_inputs(reference, generated, prompts, metrics)

    # 2. Reference and models (only those the chosen metrics need; a missing one names its download).
    ref, ref_what = reference_frames(ref_path)  # (F, H, W, 3)
    notes: list[str] = []
    sc = _load_scorers(chosen, clip, dino, arcface, notes)
    if "clip_t" in chosen and not any(per_video):
        notes.append("C-T: no --prompt given, so no text similarity")
    notes.append(f"reference: {ref_what}")

    # 3. Score each video.
    _see_reference(sc, ref, chosen)
    data = _header(ref_path, ref_what, ref, chosen, sc, notes)
    names = _names(gens)
    bar = tqdm(list(zip(names, gens, per_video)), desc="eval", unit="video", disable=not progress)
    for name, path, prompt in bar:
        bar.set_postfix_str(name)
        gen = load_clip(path).frames
        if gen.shape[:3] != ref.shape[:3] and ("mse" in chosen):
            note = (
                f"{name}: {gen.shape[0]} frames {gen.shape[1]}x{gen.shape[2]} vs the reference's "
                f"{ref.shape[0]} frames {ref.shape[1]}x{ref.shape[2]}; resampled to the reference for MSE "
                "(nearest frame in time, bilinear)"
            )
            notes.append(note)
            log(f"note: {note}")
        row = {"path": str(path), "prompt": prompt, "frames": int(gen.shape[0])}
        data["videos"][name] = row | _score_video(gen, ref, prompt, sc, chosen)
        data["order"].append(name)

    # 4. Table and metrics.json.
    out_path = Path(out) / "metrics.json"
    write_json(out_path, data)
    log(format_table(data))
    for n in notes:
        if not n.startswith(tuple(f"{k}:" for k in names)):
            log(f"note: {n}")
    log(f"wrote {out_path}")
    return EvalResult(out_path, data)
