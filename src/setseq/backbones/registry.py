"""Which backbone a model is, and loading it. One line per built-in family (`BUILTIN`, kept in `setseq.names`:
its name and the one file that defines it as `FAMILY`); a family defined elsewhere (a plug-in, a test's fake
family) joins with `register(FAMILY)`. The family files are imported when first asked for (`families`): they
import torch, and `setseq --help` names the families without it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from setseq.backbones.base import Backbone, Family
from setseq.backbones.toy.files import SHIPPED_TOY_MODELS
from setseq.errors import SetseqError
from setseq.names import FAMILIES

BUILTIN = FAMILIES  # registry name -> the module that defines its `FAMILY` (in `setseq.names`)
_REGISTERED: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family by its name."""
    _REGISTERED[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family `register` added (a test's fake family)."""
    _REGISTERED.pop(name, None)


def family_names() -> list[str]:
    """Every family's registry name, without importing any family (for help texts)."""
    return sorted({*BUILTIN, *_REGISTERED})


def families() -> list[Family]:
    """Every family, built-in ones first (in `BUILTIN`'s order)."""
    for name, module in BUILTIN.items():
        if name not in _REGISTERED:
            register(importlib.import_module(module).FAMILY)
    return [_REGISTERED[n] for n in [*BUILTIN, *sorted(set(_REGISTERED) - set(BUILTIN))]]


def family(name: str) -> Family:
    """The family registered as `name`; an unknown one is refused in one line."""
    known = {f.name: f for f in families()}
    if name not in known:
        raise SetseqError(f"unknown backbone '{name}'", f"use one of: {', '.join(sorted(known))}")
    return known[name]


def registered_backbones() -> list[str]:
    return sorted(f.name for f in families())


def guess_backbone(model_id: str) -> str:
    """The backbone family of a model id when the user names none: 'toy' for a shipped toy model or a toy
    model folder (it holds toy_config.json); for a diffusers folder, the family whose pipeline class its
    model_index.json (or, for a modular-only pipeline, modular_model_index.json) names; else 'wan' (the first real family, e.g. for a hub id)."""
    if model_id in SHIPPED_TOY_MODELS or (Path(model_id) / "toy_config.json").is_file():
        return "toy"
    index = Path(model_id) / "model_index.json"
    if not index.is_file():  # a modular-only pipeline (MiniMax H3) has only its modular index
        index = Path(model_id) / "modular_model_index.json"
    if not index.is_file():
        return "wan"
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        cls = None
    if not isinstance(cls, str):  # unreadable: let the loader report what is wrong with the folder
        return "wan"
    by_pipeline = {p: f.name for f in families() for p in f.pipelines}
    if cls in by_pipeline:
        return by_pipeline[cls]
    raise SetseqError(
        f"{model_id} holds a {cls[:80]!r} pipeline, which setseq does not support",
        f"use a checkpoint of one of: {', '.join(sorted(by_pipeline))}, or name the family with --backbone",
    )


def load_backbone(
    name: str, model_id: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Backbone:
    """Load a backbone by registry name from a local folder or hub id."""
    fam = family(name)
    try:
        return fam.load(model_id, torch.device(device), dtype)
    except SetseqError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
        # e.g. a Wan folder loaded as another family: the configs do not fit the family's classes.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SetseqError(
            f"cannot load '{model_id}' as a {name} model ({type(exc).__name__}: {first})",
            "check that --model is a checkpoint of that family, or pass the right --backbone",
        ) from None
