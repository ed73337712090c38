"""Self-describing checkpoints: LoRA tensors + optimizer state (safetensors) + stage, step, config, RNG (JSON).

Layout: `RUN/checkpoints/stage{S}-{step:06d}/{lora.safetensors, optimizer.safetensors, state.json}`. A
checkpoint is written into a temporary folder and renamed into place, and `state.json` records the sha256
of both tensor files: a folder that fails that check is never taken as "latest".
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from setseq.data.cache import file_sha256
from setseq.io import _disk_error

CHECKPOINT_VERSION = 1


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
    for idx, st in sd["state"].items():
        for name, val in st.items():
            tensors[f"{idx}.{name}"] = (
                (val if torch.is_tensor(val) else torch.tensor(val)).detach().cpu().contiguous()
            )
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    run_dir: Path,
    stage: int,
    step: int,
    lora: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"stage{stage}-{step:06d}"
    opt_t, groups = optimizer_tensors(opt)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".stage{stage}-{step:06d}.", dir=root))
        save_file(lora, str(tmp / "lora.safetensors"))
        save_file(opt_t, str(tmp / "optimizer.safetensors"))
        full = {
            "checkpoint_version": CHECKPOINT_VERSION,
            "stage": stage,
            "step": step,
            "param_groups": groups,
            "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "sha256": {n: file_sha256(tmp / n) for n in ("lora.safetensors", "optimizer.safetensors")},
            **state,
        }
        (tmp / "state.json").write_text(json.dumps(full, indent=2, default=str))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True) if "tmp" in locals() else None
        raise _disk_error(final, exc) from None
    # Keep the newest `keep` checkpoints of this stage (stage 2's are self-contained: identity + motion).
    mine = sorted(p for p in root.glob(f"stage{stage}-*") if p.is_dir())
    for old in mine[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path` if it is complete and its files match their recorded hashes, else None."""
    try:
        state = json.loads((path / "state.json").read_text())
        for name, digest in state["sha256"].items():
            if file_sha256(path / name) != digest:
                return None
        return Checkpoint(path, int(state["stage"]), int(state["step"]), state)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest valid checkpoint (by stage, then step); corrupt or partial folders are skipped."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    cands = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith(".") and p.name.startswith("stage"):
            try:
                s, st = p.name[5:].split("-")
                cands.append((int(s), int(st), p))
            except ValueError:
                continue
    for _, _, p in sorted(cands, reverse=True):
        ck = read_checkpoint(p)
        if ck is not None:
            return ck
    return None


def final_stage1(run_dir: Path, steps: int) -> Checkpoint | None:
    p = run_dir / "checkpoints" / f"stage1-{steps:06d}"
    return read_checkpoint(p) if p.is_dir() else None
