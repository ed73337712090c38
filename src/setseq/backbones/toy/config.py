"""The toy model's default configuration (what `toy_config.json` holds) and the sizes derived from it."""

from __future__ import annotations

import copy
from typing import Any

TOY_FORMAT_VERSION = 1

# The toy VAE's architecture (AutoencoderKLWan arguments), also used by scripts/train_toy_vae.py.
# Frame-wise: no temporal compression (scale_factor_temporal 1), so every frame is encoded on its own, exactly
# as stage 1 sees it (a first clip VAE with 2x temporal compression blurred sprites' colours: BENCHMARKS.md).
TOY_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 24,
    "z_dim": 8,
    "dim_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, False],
    "scale_factor_spatial": 4,
    "scale_factor_temporal": 1,
}

# Default architecture and sampler settings. `train_toy.py` fills in the codec statistics from data.
# (Pixel-codec models were trained with "prediction": "x0", see below.)
DEFAULT_TOY_CONFIG: dict[str, Any] = {
    "format_version": TOY_FORMAT_VERSION,
    "height": 32,
    "width": 32,
    "frames": 9,
    "frame_multiple": 4,
    "codec": "vae",  # "vae" (AutoencoderKLWan in vae/) or "pixel" (lossless space-to-depth)
    "vae": copy.deepcopy(TOY_VAE_CONFIG),  # architecture of a VAE built from config (codec "vae")
    "cell": 4,  # spatial compression: space-to-depth cell of the pixel codec, the VAE's spatial factor
    # per-RGB-channel statistics of pixels in [-1, 1]; latents = (pixel - mean) / std
    "pixel_mean": [0.0, 0.0, 0.0],
    "pixel_std": [1.0, 1.0, 1.0],
    "max_text_len": 32,
    # training noise levels: u ~ logit-normal, sigma = shift u / (1 + (shift - 1) u)
    "sigma_shift": 2.0,
    "sigma_weighting": "logit_normal",
    # The DiT's output is an x0 estimate, turned into the velocity (x_sigma - x0) / max(sigma, x0_sigma_min) that
    # `predict` returns ("x-prediction, v-loss", Li and He 2025, "Back to Basics: Let Denoising Generative Models
    # Denoise"). Why: a token carries 2x2 latent cells x 48 channels = 192 numbers but the DiT is 128 wide, so its
    # output lives in a 128-dim subspace; predicting the velocity (which contains the noise) directly leaves the
    # noise of the other 64 dims in every sample, predicting the low-dimensional clean video does not.
    # ("velocity": plain v-prediction, right for the VAE codec's 32 numbers a token.)
    "prediction": "velocity",
    # Two constant input planes with the token's normalised (y, x) position. Wan's only positional signal is
    # RoPE, which is relative, and the pixel codec has no padding, so without them the DiT cannot tell where
    # in the frame a token is (a VAE's zero padding leaks that; this codec does not).
    "coord_channels": 2,
    "x0_sigma_min": 0.05,
    # sampler defaults (measured by scripts/eval_toy.py)
    "sample_shift": 1.0,
    "sample_steps": 25,
    "guidance_scale": 4.0,
    "sample_self_cond": True,
    "transformer": {
        "num_layers": 8,
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "ffn_dim": 512,
        "freq_dim": 64,
    },
    "text_encoder": {"d_model": 128, "d_kv": 32, "num_heads": 4, "d_ff": 256, "num_layers": 2},
    "weights_sha": "",  # sha256 prefix of the transformer weights, set on save: part of the fingerprint
}


def toy_config(**overrides: Any) -> dict[str, Any]:
    """A deep copy of `DEFAULT_TOY_CONFIG` with top-level keys (or nested dicts) replaced."""
    cfg = copy.deepcopy(DEFAULT_TOY_CONFIG)
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"unknown toy config key '{key}' (known: {', '.join(sorted(cfg))})")
        if isinstance(cfg[key], dict) and isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def codec_name(config: dict[str, Any]) -> str:
    """The codec, "vae" or "pixel"; folders written before the VAE codec have no key: pixel-codec models."""
    return str(config.get("codec", "pixel"))


def latent_channels(config: dict[str, Any]) -> int:
    """Channels of a latent: the VAE's z_dim, or 3 colours x cell x cell for the pixel codec."""
    if codec_name(config) == "vae":
        return int(config["vae"]["z_dim"])
    return 3 * config["cell"] * config["cell"]


def dit_in_channels(config: dict[str, Any]) -> int:
    """The DiT's input channels: noisy latent + self-conditioning x0 estimate + coordinate planes."""
    return 2 * latent_channels(config) + int(config.get("coord_channels", 0))
