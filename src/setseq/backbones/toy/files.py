"""Toy model folders: build a random-weight model from config, save it, find and load it, and hash it.

Folder layout (`load("toy")` reads the shipped default in `setseq/assets/toy/`, `load("toy-large")` the one in
`setseq/assets/toy_large/`; any other model id is a local folder of the same layout)::

    toy_config.json                 codec statistics, sigma shift, size, frames, sampler defaults, version
    transformer/config.json         WanTransformer3DModel.save_pretrained (safetensors)
    transformer/diffusion_pytorch_model.safetensors
    text_encoder/config.json        UMT5EncoderModel.save_pretrained (safetensors)
    text_encoder/model.safetensors
    tokenizer/tokenizer.json        PreTrainedTokenizerFast.save_pretrained
    vae/config.json                 AutoencoderKLWan.save_pretrained (codec "vae" only)
    vae/diffusion_pytorch_model.safetensors

Only safetensors and JSON are ever read: no pickle.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import architecture
from setseq.backbones.toy.config import (
    DEFAULT_TOY_CONFIG,
    TOY_FORMAT_VERSION,
    TOY_VAE_CONFIG,
    codec_name,
    dit_in_channels,
    latent_channels,
)
from setseq.backbones.toy.tokenizer import EOS, PAD, UNK, build_tokenizer, toy_vocabulary
from setseq.data.cache import config_hash
from setseq.errors import SetseqError
from setseq.io import write_json
from setseq.legacy import legacy_fingerprint

TOY_SHIPPED_FOLDER = Path(__file__).resolve().parents[2] / "assets" / "toy"
# The toy models shipped with setseq, by name: "toy" (the default: 4-layer DiT, trained from scratch in ~60 min
# of 2 CPU cores by scripts/train_toy_model.sh) and "toy-large" (8-layer DiT, ~4 h 40 min by
# scripts/train_toy_large.sh; the ablation bench in BENCHMARKS.md was measured on it). Any other model id is a
# local toy model folder.
SHIPPED_TOY_MODELS = {
    "toy": TOY_SHIPPED_FOLDER,
    "toy-large": TOY_SHIPPED_FOLDER.parent / "toy_large",
}
RESTORE_HINT = (
    "re-install setseq, or run `git checkout src/setseq/assets`, "
    "or retrain one with `bash scripts/train_toy_model.sh DIR` (~60 min) and pass DIR/model as the model id"
)

# Files that must exist in a toy model folder, relative to it (plus VAE_FILES when the codec is "vae").
REQUIRED_FILES = (
    "toy_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
)
VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")


@dataclass
class ToyComponents:
    """The parts of a toy model: what `save_toy_model` writes and `ToyBackbone` wraps."""

    config: dict[str, Any]
    transformer: torch.nn.Module  # WanTransformer3DModel
    text_encoder: torch.nn.Module  # UMT5EncoderModel
    tokenizer: Any  # PreTrainedTokenizerFast
    vae: torch.nn.Module | None = None  # AutoencoderKLWan when config["codec"] == "vae"


# ---------------------------------------------------------------------------------------------------------
# Building from config
# ---------------------------------------------------------------------------------------------------------


def build_toy_vae(config: dict[str, Any]):
    """A random-weight `AutoencoderKLWan` of the toy config's VAE architecture (unit latent statistics)."""
    # (heavy to import: loaded where used)
    from diffusers import AutoencoderKLWan

    z = int(config["vae"]["z_dim"])
    return AutoencoderKLWan(**config["vae"], latents_mean=[0.0] * z, latents_std=[1.0] * z)


def build_toy_components(
    config: dict[str, Any] | None = None, seed: int = 0, words: list[str] | None = None
) -> ToyComponents:
    """Random-weight toy model from a config (see `DEFAULT_TOY_CONFIG`), seeded. Shared by training and tests."""
    # (heavy to import: loaded where used)
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    config = copy.deepcopy(config or DEFAULT_TOY_CONFIG)
    vocab = toy_vocabulary(words)
    tokenizer = build_tokenizer(vocab)
    te = config["text_encoder"]
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(vocab),
                d_model=te["d_model"],
                d_kv=te["d_kv"],
                d_ff=te["d_ff"],
                num_layers=te["num_layers"],
                num_heads=te["num_heads"],
                dropout_rate=0.0,
                feed_forward_proj="gated-gelu",
                pad_token_id=vocab.index(PAD),
                eos_token_id=vocab.index(EOS),
                is_encoder_decoder=False,
            )
        )
        tr = config["transformer"]
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=tr["num_attention_heads"],
            attention_head_dim=tr["attention_head_dim"],
            in_channels=dit_in_channels(config),  # noisy latent + self-conditioning x0 estimate + coordinates
            out_channels=latent_channels(config),
            text_dim=te["d_model"],
            freq_dim=tr["freq_dim"],
            ffn_dim=tr["ffn_dim"],
            num_layers=tr["num_layers"],
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=64,
        )
        vae = build_toy_vae(config).eval() if codec_name(config) == "vae" else None
    finally:
        torch.random.set_rng_state(gen_state)
    return ToyComponents(config, transformer.eval(), text_encoder.eval(), tokenizer, vae)


# ---------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_toy_model(
    folder: str | Path, components: ToyComponents, extra: dict[str, Any] | None = None
) -> Path:
    """Write a toy model folder (safetensors + JSON only). `extra` is merged into toy_config.json (e.g. step)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    components.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    components.tokenizer.save_pretrained(folder / "tokenizer")
    if codec_name(components.config) == "vae":
        if components.vae is None:
            raise ValueError('codec "vae" needs components.vae')
        components.vae.save_pretrained(folder / "vae", safe_serialization=True)
        cfg_vae = dict(components.vae.config)
        components.config["vae"] = {k: cfg_vae[k] for k in TOY_VAE_CONFIG}
    cfg = copy.deepcopy(components.config)
    cfg["weights_sha"] = _sha_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")[:16]
    cfg["format_version"] = TOY_FORMAT_VERSION
    if extra:
        cfg.setdefault("trained", {}).update(extra)
    write_json(folder / "toy_config.json", cfg)
    components.config = cfg
    return folder


def toy_folder(model_id: str | None) -> Path:
    """The folder of a toy model id: a shipped model's name ("toy", "toy-large"; "" is "toy"), else the path."""
    if model_id in ("", None):
        return TOY_SHIPPED_FOLDER
    if model_id in SHIPPED_TOY_MODELS:
        return SHIPPED_TOY_MODELS[model_id]
    return Path(model_id).expanduser()


def _check_folder(folder: Path, config: dict[str, Any] | None = None) -> None:
    if not folder.is_dir():
        raise SetseqError(f"toy model folder {folder} does not exist", RESTORE_HINT)
    needed = REQUIRED_FILES + (VAE_FILES if config is not None and codec_name(config) == "vae" else ())
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise SetseqError(
            f"toy model folder {folder} is incomplete: missing {', '.join(missing)}", RESTORE_HINT
        )


def load_toy_components(model_id: str = "toy") -> ToyComponents:
    """Read a toy model folder ("toy" = the shipped one). Raises `SetseqError` naming any missing file."""
    # (heavy to import: loaded where used)
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

    folder = toy_folder(model_id)
    _check_folder(folder)
    try:
        config = json.loads((folder / "toy_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SetseqError(f"cannot read {folder / 'toy_config.json'}: {exc}", RESTORE_HINT) from None
    if config.get("format_version") != TOY_FORMAT_VERSION:
        raise SetseqError(
            f"toy model {folder} has format version {config.get('format_version')}, this setseq reads {TOY_FORMAT_VERSION}",
            RESTORE_HINT,
        )
    if codec_name(config) not in ("vae", "pixel"):
        raise SetseqError(f"toy model {folder} has an unknown codec {config.get('codec')!r}", RESTORE_HINT)
    _check_folder(folder, config)
    try:
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", use_safetensors=True)
        text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", use_safetensors=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
        vae = None
        if codec_name(config) == "vae":
            vae = AutoencoderKLWan.from_pretrained(folder / "vae", use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SetseqError(
            f"cannot load toy model from {folder}: {str(exc).splitlines()[0]}", RESTORE_HINT
        ) from None
    tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token = PAD, EOS, UNK
    return ToyComponents(config, transformer.eval(), text_encoder.eval(), tokenizer, vae)


# ---------------------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------------------


def toy_fingerprint(components: ToyComponents, legacy: bool = False) -> str:
    """12 hex digits over every config and the vocabulary (the transformer weights enter by `weights_sha`), less
    how the configs were loaded (`architecture`: the folder, library version, dtype); `legacy`: the form of
    `setseq.legacy` (before 2026-12-02, when they counted)."""
    configs = {
        "toy": components.config,
        "transformer": dict(components.transformer.config),
        "text_encoder": components.text_encoder.config.to_dict(),
        "vae": dict(components.vae.config) if components.vae is not None else None,
    }
    vocab = sorted(components.tokenizer.get_vocab().items())
    if legacy:
        return legacy_fingerprint({**configs, "vocab": vocab}, 12)
    return config_hash({**architecture(configs), "vocab": vocab}, 12)


def shipped_toy_with_fingerprint(fingerprint: str | None, skip: str | None = None) -> str | None:
    """The name of the shipped toy model (other than `skip`) whose fingerprint this is, else None: names the
    model an old run was trained on (before 2026-11-29 "toy" was the 8-layer model now shipped as "toy-large")."""
    if not fingerprint:
        return None
    for name in SHIPPED_TOY_MODELS:
        if name == skip:
            continue
        try:
            components = load_toy_components(name)
            if fingerprint in (toy_fingerprint(components), toy_fingerprint(components, legacy=True)):
                return name
        except SetseqError:  # a shipped model missing from this install: nothing to name
            continue
    return None
