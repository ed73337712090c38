"""Backbones: one file per model family (its hooks, ComfyUI names, bench shapes and tiny model), behind the
`Backbone` base class, and a registry keyed by name (`registry.BUILTIN`, one line a family)."""

from setseq.backbones.base import Backbone, BackboneInfo, Family
from setseq.backbones.registry import (
    family,
    family_names,
    guess_backbone,
    load_backbone,
    register,
    registered_backbones,
)
from setseq.prompts import PromptEmbeds

__all__ = [
    "Backbone",
    "BackboneInfo",
    "Family",
    "PromptEmbeds",
    "family",
    "family_names",
    "guess_backbone",
    "load_backbone",
    "register",
    "registered_backbones",
]
