"""Self-describing checkpoints: LoRA tensors + optimizer state (safetensors) + stage, step, config, RNG (JSON).

Layout: `RUN/checkpoints/stage{S}-{step:06d}/{lora.safetensors, optimizer.safetensors, state.json}`. A
checkpoint is written into a temporary folder and renamed into place, and `state.json` records the sha256
of both tensor files: a folder that fails that check is never taken as "latest". Old checkpoints are renamed
to a hidden name before they are deleted, so a kill never leaves a half-deleted folder under a checkpoint's
name. Weights that are not all finite are never saved.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from setseq.data.cache import file_sha256
from setseq.dtensors import as_param_like, whole
from setseq.errors import SetseqError
from setseq.io import disk_error, fsync_dir, os_error_of, remove_stale_temps

CHECKPOINT_VERSION = 1
FILES = ("lora.safetensors", "optimizer.safetensors")


@dataclass
class Checkpoint:
    path: Path
    stage: int
    step: int
    state: dict[str, Any]

    def lora(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "lora.safetensors"))

    def optimizer(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "optimizer.safetensors"))


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer's state to tensors + JSON-able param groups (no pickle)."""
    sd = opt.state_dict()
    tensors = {}
    for idx in sorted(sd["state"]):  # the same order on every process: `whole` gathers sharded state
        for name in sorted(sd["state"][idx]):
            val = sd["state"][idx][name]
            val = whole(val) if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"{idx}.{name}"] = val.detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> None:
    """Load `optimizer_tensors`' output back into `opt` (each state tensor laid out like its parameter). The
    learning rates stay `opt`'s own (the config's, which `--resume` may change: stageN.lr, concept.embedding_lr);
    an unchanged config has the checkpoint's, so an uninterrupted run and a resumed one step alike."""
    lrs = [g["lr"] for g in opt.param_groups]
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        i = int(idx)
        # Whole tensors on file; a sharded (DTensor) parameter takes its shard of its moments.
        state.setdefault(i, {})[name] = as_param_like(val, params[i]) if i < len(params) else val
    opt.load_state_dict({"state": state, "param_groups": groups})
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def _discard(path: Path) -> None:
    """Delete a checkpoint folder: first renamed to a hidden name (atomic), then removed."""
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{path.name}.", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def lower_lr_advice(run_dir: Path, stage: int, lr: float | None) -> str:
    """The fix after a blow-up: the command that resumes from the last good checkpoint at a tenth of the
    stage's learning rate (`--resume` takes stageN.lr)."""
    lower = f"{lr / 10:g}" if lr else "1e-5"
    return f"resume at a lower learning rate: `setseq train --resume {shlex.quote(str(run_dir))} stage{stage}.lr={lower}`"


def save_checkpoint(
    run_dir: Path,
    stage: int,
    step: int,
    lora: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer | tuple[dict[str, torch.Tensor], list[dict[str, Any]]],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"stage{int(stage)}-{int(step):06d}"
    if not all_finite(lora):
        raise SetseqError(
            f"the weights at stage {stage} step {step} are not all finite, so no checkpoint was written",
            lower_lr_advice(run_dir, stage, (state.get("config") or {}).get(f"stage{stage}", {}).get("lr")),
        )
    # (an optimizer, or its `optimizer_tensors`, gathered beforehand by every process when sharded)
    opt_t, groups = optimizer_tensors(opt) if isinstance(opt, torch.optim.Optimizer) else opt
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(root)  # left by a killed run; one process writes a run folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        save_file(lora, str(tmp / FILES[0]))
        save_file(opt_t, str(tmp / FILES[1]))
        full = {
            "checkpoint_version": CHECKPOINT_VERSION,
            "stage": stage,
            "step": step,
            "param_groups": groups,
            "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "sha256": {n: file_sha256(tmp / n) for n in FILES},
            **state,
        }
        (tmp / "state.json").write_text(json.dumps(full, indent=2, default=str))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755 & ~_umask())
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        tmp = None
        fsync_dir(root)
    except Exception as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        os_exc = os_error_of(exc)
        if os_exc is None:
            raise
        raise disk_error(final, os_exc) from None
    # Keep the newest `keep` checkpoints of this stage (stage 2's are self-contained: identity + motion).
    mine = sorted(p for p in root.glob(f"stage{stage}-*") if p.is_dir())
    for old in mine[:-keep] if keep > 0 else []:
        with contextlib.suppress(OSError):
            _discard(old)
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path` if it is complete and its files match their recorded hashes, else None."""
    try:
        state = json.loads((path / "state.json").read_text())
        # The hashes name exactly our two files (data from the file never picks what is read).
        if not isinstance(state, dict) or sorted(state["sha256"]) != sorted(FILES):
            return None
        for name in FILES:
            if file_sha256(path / name) != state["sha256"][name]:
                return None
        stage, step = int(state["stage"]), int(state["step"])
        if path.name != f"stage{stage}-{step:06d}":
            return None
        return Checkpoint(path, stage, step, state)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _candidates(root: Path) -> list[tuple[int, int, Path]]:
    """(stage, step, folder) of every `stage{S}-{step}` folder; hidden (temporary) folders are not candidates."""
    cands = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith(".") and p.name.startswith("stage"):
            try:
                s, st = p.name[5:].split("-")
                cands.append((int(s), int(st), p))
            except ValueError:
                continue
    return cands


def latest_checkpoint(run_dir: Path, *, finite: bool = False) -> Checkpoint | None:
    """The newest valid checkpoint (by stage, then step); corrupt or partial folders are skipped. With
    `finite`, also skip those whose LoRA weights are not all finite (what to resume from after a blow-up)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    for _, _, p in sorted(_candidates(root), reverse=True):
        ck = read_checkpoint(p)
        if ck is None:
            continue
        if not finite:
            return ck
        try:
            if all_finite(ck.lora()):
                return ck
        except (OSError, ValueError, RuntimeError, SafetensorError):
            continue
    return None
    for _, _, p in sorted(_candidates(root), reverse=True):
        ck = read_checkpoint(p)
        if ck is not None:
            try:
                if all_finite(ck.lora()):
                    return ck
            except (OSError, ValueError, RuntimeError, SafetensorError):
                continue
    return None
