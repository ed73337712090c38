"""The toy backbone: a small text-to-video DiT trained from scratch on the synthetic world, shipped with setseq.

It is a real Wan-family model, only tiny, so that every recipe runs end to end on a laptop CPU. By concern:

| module | what |
|---|---|
| `model.py` | `ToyBackbone` (the `Backbone` protocol) and `load_toy`, registered as "toy" |
| `config.py` | `DEFAULT_TOY_CONFIG` (toy_config.json) and the sizes derived from it |
| `files.py` | build from config, save, find (`SHIPPED_TOY_MODELS`), load and fingerprint a model folder |
| `tokenizer.py` | the word-level vocabulary (caption words + identifier tokens) and its tokenizer |
| `sampler.py` | Euler steps on the flow-matching ODE with CFG and self-conditioning |
| `vae_codec.py` | the shipped models' codec: a tiny frame-wise `AutoencoderKLWan` |
| `pixel_codec.py` | the first design's lossless space-to-depth codec (its models and the tests' tiny ones) |
"""

from setseq.backbones.toy.config import DEFAULT_TOY_CONFIG, TOY_VAE_CONFIG, toy_config
from setseq.backbones.toy.files import (
    REQUIRED_FILES,
    SHIPPED_TOY_MODELS,
    VAE_FILES,
    ToyComponents,
    build_toy_components,
    load_toy_components,
    save_toy_model,
    shipped_toy_with_fingerprint,
    toy_folder,
)
from setseq.backbones.toy.model import FAMILY, ToyBackbone, load_toy
from setseq.backbones.toy.tokenizer import IDENTIFIER_TOKENS

__all__ = [
    "DEFAULT_TOY_CONFIG",
    "FAMILY",
    "IDENTIFIER_TOKENS",
    "REQUIRED_FILES",
    "SHIPPED_TOY_MODELS",
    "TOY_VAE_CONFIG",
    "VAE_FILES",
    "ToyBackbone",
    "ToyComponents",
    "build_toy_components",
    "load_toy",
    "load_toy_components",
    "save_toy_model",
    "shipped_toy_with_fingerprint",
    "toy_config",
    "toy_folder",
]
