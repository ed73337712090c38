"""Which backbone a model is, and loading it: the built-in families, the registry's loaders, and the family
of a model folder from its `model_index.json`. Above the families (it imports them, lazily: diffusers takes
seconds to import and `setseq --help` must stay fast); the families register into `base`'s registry."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from setseq.backbones.base import Backbone, registered_loaders
from setseq.errors import SetseqError


def registered_backbones() -> list[str]:
    _import_builtin()
    return sorted(registered_loaders())


def _import_builtin() -> None:
    # Imported lazily so that `setseq --help` stays fast (diffusers takes seconds to import).
    from setseq.backbones import cogvideox, hunyuan, hunyuan15, ltx, ltx2, toy, wan  # noqa: F401


# diffusers pipeline class (model_index.json `_class_name`) -> backbone family
PIPELINE_FAMILIES = {
    "WanPipeline": "wan",
    "WanImageToVideoPipeline": "wan",  # Wan 2.1 I2V (CLIP image_encoder), Wan 2.2 I2V A14B: generation only
    "CogVideoXPipeline": "cogvideox",
    "LTXPipeline": "ltx",
    "HunyuanVideoPipeline": "hunyuan",
    "LTX2Pipeline": "ltx2",  # LTX-2: video only (the audio branch frozen)
    "HunyuanVideo15Pipeline": "hunyuan15",  # text-to-video only (HunyuanVideo15ImageToVideoPipeline: refused)
}


def guess_backbone(model_id: str) -> str:
    """The backbone family of a model id when the user names none: 'toy' for a shipped toy model or a toy
    model folder (it holds toy_config.json); for a diffusers folder, the family of the pipeline class named in
    its model_index.json; else 'wan' (the first real family, e.g. for a hub id)."""
    from setseq.backbones.toy import SHIPPED_TOY_MODELS

    if model_id in SHIPPED_TOY_MODELS or (Path(model_id) / "toy_config.json").is_file():
        return "toy"
    index = Path(model_id) / "model_index.json"
    if index.is_file():
        try:
            cls = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError):
            cls = None
        if not isinstance(cls, str):  # unreadable: let the loader report what is wrong with the folder
            return "wan"
        if cls in PIPELINE_FAMILIES:
            return PIPELINE_FAMILIES[cls]
        raise SetseqError(
            f"{model_id} holds a {cls[:80]!r} pipeline, which setseq does not support",
            f"use a checkpoint of one of: {', '.join(sorted(PIPELINE_FAMILIES))}, "
            "or name the family with --backbone",
        )
    return "wan"


def load_backbone(
    name: str, model_id: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Backbone:
    """Load a backbone by registry name from a local folder or hub id."""
    _import_builtin()
    loaders = registered_loaders()
    if name not in loaders:
        raise SetseqError(f"unknown backbone '{name}'", f"use one of: {', '.join(sorted(loaders))}")
    try:
        return loaders[name](model_id, torch.device(device), dtype)
    except SetseqError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
        # e.g. a Wan folder loaded with --backbone cogvideox: the configs do not fit the family's classes.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SetseqError(
            f"cannot load '{model_id}' as a {name} model ({type(exc).__name__}: {first})",
            "check that --model is a checkpoint of that family, or pass the right --backbone",
        ) from None
