"""Backbones: one file per model family, behind the `Backbone` protocol and a registry keyed by name."""

from setseq.backbones.base import Backbone, BackboneInfo, register_backbone
from setseq.backbones.registry import guess_backbone, load_backbone, registered_backbones
from setseq.prompts import PromptEmbeds

__all__ = [
    "Backbone",
    "BackboneInfo",
    "PromptEmbeds",
    "guess_backbone",
    "load_backbone",
    "register_backbone",
    "registered_backbones",
]
