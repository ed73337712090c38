"""What a run writes besides checkpoints: TensorBoard, sample videos during training, and at the end
`setseq.safetensors` (identity and motion apart, with the run's metadata) plus the merged LoRA in diffusers'
and ComfyUI's layouts; and reading a run folder's config back."""

from __future__ import annotations

import contextlib
import fnmatch
import shlex
from pathlib import Path
from typing import Any

import yaml

from setseq import __version__
from setseq import lora as L
from setseq.backbones.base import Backbone
from setseq.config import RunConfig
from setseq.data.video import probe_video
from setseq.errors import SetseqError
from setseq.export import export_file, load_setseq, lora_experts, save_setseq
from setseq.train.distributed import Processes
from setseq.train.embeddings import TokenEmbeddings, save_embeddings
from setseq.train.loop import trainable_state

#: What a run folder holds (besides `lora_*.safetensors`, `embedding_*.safetensors` and hidden temporary
#: files): a new run may start in a folder of nothing else (a first start that failed leaves some of these).
RUN_ENTRIES = ("config.yaml", "cache", "checkpoints", "logs", "samples", "setseq.safetensors")


def check_out_folder(out: Path) -> None:
    """Refuse to start a new run in a file, or in a folder that holds other things than a run's, before
    anything is written there: the run's files would be mixed into it."""
    if out.exists() and not out.is_dir():
        raise SetseqError(f"--out {out} is a file, not a folder", "pass a new folder, e.g. --out runs/NAME")
    if not out.is_dir():
        return
    ours = ("lora_*.safetensors", "embedding_*.safetensors", ".*")
    strays = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in RUN_ENTRIES and not any(fnmatch.fnmatch(p.name, g) for g in ours)
    )
    if strays:
        fresh = next(
            out / f"setseq-run{i or ''}" for i in range(1000) if not (out / f"setseq-run{i or ''}").exists()
        )
        listed = ", ".join(strays[:3]) + (f" and {len(strays) - 3} more" if len(strays) > 3 else "")
        raise SetseqError(
            f"--out {out} already holds other files ({listed}), not a setseq run",
            f"pass a new folder for the run, e.g. --out {shlex.quote(str(fresh))}",
        )


def tensorboard_writer(run_dir: Path, enabled: bool):
    """A TensorBoard SummaryWriter on `run_dir/logs`, or None (off, or tensorboard not installed)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    return SummaryWriter(str(run_dir / "logs"))


def run_fps(cfg: RunConfig) -> float | None:
    """The frame rate of the run's clip: the rate it was sampled at (data.fps), else its video's own; None
    when the video declares none. Every video the run writes, and those generated with it, play at it."""
    if cfg.data.fps:
        return float(cfg.data.fps)
    try:
        return probe_video(cfg.data.video).fps or None  # type: ignore[arg-type]
    except (SetseqError, TypeError):
        return None


def lora_metadata(
    cfg: RunConfig, bb: Backbone, spec: L.LoraSpec, frames: int, h: int, w: int
) -> dict[str, Any]:
    """The metadata `setseq.safetensors` carries: what generation, export and `info` read back."""
    return {
        "backbone": bb.info.name,
        "model_id": cfg.model.path,
        "dtype": cfg.model.dtype,
        "fingerprint": bb.info.fingerprint,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "basis": spec.basis,
        "targets": list(spec.targets),
        "token": cfg.concept.token,
        "class_word": cfg.concept.class_word,
        "motion_token": cfg.concept.motion_token,
        "t_static": cfg.concept.t_static,
        "t_motion": cfg.concept.t_motion,
        "identity_scale": 1.0,
        "motion_scale": 1.0,
        "frames": frames,
        "size": [h, w],
        "fps": run_fps(cfg),
        "guidance_scale": cfg.train.guidance_scale,
        "stage1_steps": cfg.stage1.steps,
        "stage2_steps": cfg.stage2.steps,
        "method": cfg.method,
        "tokens": [t for _, c in cfg.concepts() for t in (c.token, c.motion_token)],
        "setseq_version": __version__,
    }


def write_outputs(
    cfg: RunConfig,
    bb: Backbone,
    run_dir: Path,
    procs: Processes,
    spec: L.LoraSpec,
    shape: tuple[int, int, int],
    embeddings: TokenEmbeddings | None,
) -> list[Path]:
    """setseq's own file, then the merged LoRA in diffusers' and ComfyUI's layouts (one file per expert of
    Wan 2.2 A14B), and the token embeddings if they trained. Every process takes part (sharded tensors are
    gathered); process 0 alone writes, the others wait for it. Returns the files written (process 0)."""
    final = trainable_state(bb.transformer, 2)
    if not procs.is_main:
        procs.barrier()  # returns once process 0 has written them
        return []
    save_setseq(run_dir / "setseq.safetensors", final, lora_metadata(cfg, bb, spec, *shape))
    lora = load_setseq(run_dir / "setseq.safetensors")
    formats = ["diffusers"] + (["comfyui"] if bb.info.name == "wan" else [])  # the toy model: no ComfyUI
    written = [
        export_file(lora, fmt, run_dir / f"lora_{fmt}{f'_{e}_noise' if e else ''}.safetensors", expert=e)
        for fmt in formats
        for e in (lora_experts(lora) or [None])  # Wan 2.2 A14B: one file per expert
    ]
    if embeddings is not None:
        written += save_embeddings(run_dir, embeddings)
        embeddings.remove()
    procs.barrier()
    return [run_dir / "setseq.safetensors", *written]


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's `config.yaml` as plain data; {} when it is missing or unreadable."""
    with contextlib.suppress(OSError, yaml.YAMLError):
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return {}
