"""The toy backbone: a small text-to-video DiT trained from scratch on the synthetic world, shipped with setseq.

It is a real Wan-family model, only tiny, so that every recipe runs end to end on a laptop CPU:

- codec (`"codec"` in toy_config.json), one of:
  - `"vae"` (the shipped model): a tiny diffusers `AutoencoderKLWan` trained by `scripts/train_toy_vae.py`,
    4x spatial and 2x temporal compression, 8 channels: a clip (B, 9, 3, 32, 32) in [-1, 1] becomes latents
    (B, 8, 5, 8, 8), normalised with the VAE config's `latents_mean` / `latents_std`. It is causal in time, so
    a 1-frame video is a 1-frame latent, which is what stage 1 (frames as images) needs.
  - `"pixel"`: a lossless fixed codec. Each frame is cut into 4x4 pixel cells (space-to-depth): latents
    (B, 48, F, 8, 8), normalised per colour channel; `decode_latents` is the exact inverse. It was the first
    design; its 192 numbers per DiT token made the 128-wide DiT render sprites as 8x8 blocks (BENCHMARKS.md).
- DiT: diffusers `WanTransformer3DModel`, patch (1, 2, 2), i.e. 16 tokens a latent frame (80 for a 9-frame
  clip with the VAE). Its input is the noisy latent concatenated with a self-conditioning estimate of x0
  (zeros when absent) and two coordinate planes, so `in_channels = 2 * C + 2` (Chen and Li's FIT / RIN
  self-conditioning: the base model was trained with it on half of its steps, which is what the paper's
  context-aware self-conditioning regularizer needs).
- text: a word-level tokenizer built in code from the synthetic caption vocabulary plus rare identifier
  tokens ("sks", "zwx", ...) that never appear in pre-training captions, and a tiny `UMT5EncoderModel`.
  Embeddings beyond each prompt's length are zeroed, the way Wan pads.

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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import BackboneInfo, PromptEmbeds, register_backbone
from setseq.errors import SetseqError
from setseq.functional.flow_matching import sample_sigmas as _draw_sigmas
from setseq.functional.flow_matching import shift_sigmas, x0_from_velocity

TOY_FORMAT_VERSION = 1
TOY_SHIPPED_FOLDER = Path(__file__).resolve().parent.parent / "assets" / "toy"
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

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# Rare identifier tokens for personalization ("a sks circle ... in zwx motion"): in the vocabulary, never in
# pre-training captions, so their embeddings carry no prior meaning.
IDENTIFIER_TOKENS = ("sks", "zwx", "qrv", "vkt", "pqm")
# Prompt words of the recipes (T_static / T_motion, prior prompts) that the caption grammar may not contain.
GENERIC_WORDS = (
    "a", "an", "the", "in", "on", "of", "with", "and", "at", "over", "is", "it", "its", "this", "that",
    "motion", "moving", "moves", "person", "man", "woman", "object", "thing", "shape", "sprite", "video",
    "scene", "background", "style", "camera", "static", "still", "slow", "fast", "slowly", "quickly",
    "left", "right", "up", "down", "around", "dance", "dancing", "walk", "walking", "jump", "jumping",
    "spin", "spinning", "bounce", "bouncing", "two", "one", "together", "beside", "next", "to",
)  # fmt: skip

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


# ---------------------------------------------------------------------------------------------------------
# Building, saving, loading
# ---------------------------------------------------------------------------------------------------------


def toy_vocabulary(words: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Special tokens first (`<pad>`=0, `</s>`=1, `<unk>`=2, the UMT5 convention), then sorted lowercase words.

    `words` defaults to the synthetic caption vocabulary (`setseq.data.synthetic.caption_words()`)."""
    if words is None:
        from setseq.data.synthetic import caption_words

        words = caption_words()
    vocab = {w.lower() for w in words} | set(IDENTIFIER_TOKENS) | set(GENERIC_WORDS)
    vocab -= {PAD, EOS, UNK, ""}
    return [PAD, EOS, UNK, *sorted(vocab)]


def build_tokenizer(vocab: list[str]):
    """Word-level tokenizer: lowercase, split on whitespace and punctuation, unknown words -> `<unk>`, `</s>` appended."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = (
        pre_tokenizers.Whitespace()
    )  # \w+ | [^\w\s]+ : punctuation becomes its own (unknown) word
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, vocab.index(EOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


@dataclass
class ToyComponents:
    """The parts of a toy model: what `save_toy_model` writes and `ToyBackbone` wraps."""

    config: dict[str, Any]
    transformer: torch.nn.Module  # WanTransformer3DModel
    text_encoder: torch.nn.Module  # UMT5EncoderModel
    tokenizer: Any  # PreTrainedTokenizerFast
    vae: torch.nn.Module | None = None  # AutoencoderKLWan when config["codec"] == "vae"


def _codec(config: dict[str, Any]) -> str:
    return str(config.get("codec", "pixel"))  # folders written before the VAE codec have no key


def _latent_channels(config: dict[str, Any]) -> int:
    if _codec(config) == "vae":
        return int(config["vae"]["z_dim"])
    return 3 * config["cell"] * config["cell"]


def build_toy_vae(config: dict[str, Any]):
    """A random-weight `AutoencoderKLWan` of the toy config's VAE architecture (unit latent statistics)."""
    from diffusers import AutoencoderKLWan

    z = int(config["vae"]["z_dim"])
    return AutoencoderKLWan(**config["vae"], latents_mean=[0.0] * z, latents_std=[1.0] * z)


def _in_channels(config: dict[str, Any]) -> int:
    return 2 * _latent_channels(config) + int(config.get("coord_channels", 0))


def add_coordinate_channels(components: ToyComponents, coord_channels: int = 2) -> ToyComponents:
    """Give a model trained without coordinate planes its input channels, zero-initialised (same function)."""
    from diffusers import WanTransformer3DModel

    old = components.transformer
    have = int(components.config.get("coord_channels", 0))
    if have == coord_channels:
        return components
    cfg = copy.deepcopy(components.config)
    cfg["coord_channels"] = coord_channels
    new = WanTransformer3DModel.from_config({**dict(old.config), "in_channels": _in_channels(cfg)})
    state = old.state_dict()
    w = state["patch_embedding.weight"]  # (D, in, 1, 2, 2)
    pad = torch.zeros(w.shape[0], _in_channels(cfg) - w.shape[1], *w.shape[2:], dtype=w.dtype)
    state["patch_embedding.weight"] = torch.cat([w, pad], dim=1)
    new.load_state_dict(state)
    return ToyComponents(
        config=cfg,
        transformer=new.eval(),
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        vae=components.vae,
    )


def build_toy_components(
    config: dict[str, Any] | None = None, seed: int = 0, words: list[str] | None = None
) -> ToyComponents:
    """Random-weight toy model from a config (see `DEFAULT_TOY_CONFIG`), seeded. Shared by training and tests."""
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
        c = _latent_channels(config)
        tr = config["transformer"]
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=tr["num_attention_heads"],
            attention_head_dim=tr["attention_head_dim"],
            in_channels=_in_channels(config),  # noisy latent + self-conditioning x0 estimate + coordinates
            out_channels=c,
            text_dim=te["d_model"],
            freq_dim=tr["freq_dim"],
            ffn_dim=tr["ffn_dim"],
            num_layers=tr["num_layers"],
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=64,
        )
        vae = build_toy_vae(config).eval() if _codec(config) == "vae" else None
    finally:
        torch.random.set_rng_state(gen_state)
    return ToyComponents(
        config=config,
        transformer=transformer.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        vae=vae,
    )


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
    from setseq.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    components.transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    components.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    components.tokenizer.save_pretrained(folder / "tokenizer")
    if _codec(components.config) == "vae":
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
    needed = REQUIRED_FILES + (VAE_FILES if config is not None and _codec(config) == "vae" else ())
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise SetseqError(
            f"toy model folder {folder} is incomplete: missing {', '.join(missing)}", RESTORE_HINT
        )


def load_toy_components(model_id: str = "toy") -> ToyComponents:
    """Read a toy model folder ("toy" = the shipped one). Raises `SetseqError` naming any missing file."""
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
    if _codec(config) not in ("vae", "pixel"):
        raise SetseqError(f"toy model {folder} has an unknown codec {config.get('codec')!r}", RESTORE_HINT)
    _check_folder(folder, config)
    try:
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", use_safetensors=True)
        text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", use_safetensors=True)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
        vae = None
        if _codec(config) == "vae":
            vae = AutoencoderKLWan.from_pretrained(folder / "vae", use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SetseqError(
            f"cannot load toy model from {folder}: {str(exc).splitlines()[0]}", RESTORE_HINT
        ) from None
    tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token = PAD, EOS, UNK
    return ToyComponents(
        config=config,
        transformer=transformer.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        vae=vae,
    )


def _fingerprint(components: ToyComponents) -> str:
    blob = json.dumps(
        {
            "toy": components.config,
            "transformer": dict(components.transformer.config),
            "text_encoder": components.text_encoder.config.to_dict(),
            "vae": dict(components.vae.config) if components.vae is not None else None,
            "vocab": sorted(components.tokenizer.get_vocab().items()),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------------------


def shipped_toy_with_fingerprint(fingerprint: str | None, skip: str | None = None) -> str | None:
    """The name of the shipped toy model (other than `skip`) whose fingerprint this is, else None: names the
    model an old run was trained on (before 2026-11-29 "toy" was the 8-layer model now shipped as "toy-large")."""
    if not fingerprint:
        return None
    for name in SHIPPED_TOY_MODELS:
        if name == skip:
            continue
        try:
            if _fingerprint(load_toy_components(name)) == fingerprint:
                return name
        except SetseqError:  # a shipped model missing from this install: nothing to name
            continue
    return None


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    current = next(module.parameters()).dtype
    return module.to(device) if current == dtype else module.to(device, dtype)


class ToyBackbone:
    """The toy model behind the `Backbone` protocol. Frozen on construction (`requires_grad=False`)."""

    def __init__(
        self,
        components: ToyComponents,
        model_id: str = "toy",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        freeze: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = components.config
        self.tokenizer = components.tokenizer
        # (only pass a dtype when it changes: diffusers warns on any `.to(dtype)` of a Wan model)
        self.transformer = _move(components.transformer, self.device, dtype)
        self.text_encoder = _move(components.text_encoder, self.device, dtype)
        if freeze:
            self.transformer.requires_grad_(False)
            self.text_encoder.requires_grad_(False)
        cfg = self.config
        self.codec = _codec(cfg)
        self.latent_channels = _latent_channels(cfg)
        self.cell = int(cfg["vae"]["scale_factor_spatial"] if self.codec == "vae" else cfg["cell"])
        # latent frames per pixel frame group: the VAE halves time after the first frame
        self.temporal = int(cfg["vae"]["scale_factor_temporal"]) if self.codec == "vae" else 1
        self.vae = None
        if self.codec == "vae":
            if components.vae is None:
                raise SetseqError('toy model config says codec "vae" but no VAE was given', RESTORE_HINT)
            self.vae = _move(components.vae, self.device, dtype).eval().requires_grad_(False)
            vcfg = self.vae.config
            self._lat_mean = torch.tensor(vcfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
            self._lat_std = torch.tensor(vcfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        # (1, 3, 1, 1, 1): broadcast over (B, 3, F, H, W)
        self._pix_mean = torch.tensor(cfg["pixel_mean"], dtype=torch.float32).view(1, 3, 1, 1, 1)
        self._pix_std = torch.tensor(cfg["pixel_std"], dtype=torch.float32).view(1, 3, 1, 1, 1)
        self.info = BackboneInfo(
            name="toy",
            model_id=str(model_id),
            fingerprint=_fingerprint(components),
            height=int(cfg["height"]),
            width=int(cfg["width"]),
            frames=int(cfg["frames"]),
            frame_multiple=int(cfg["frame_multiple"]),
            spatial_multiple=self.cell * 2,  # codec cell x DiT patch
            supports_self_conditioning=True,
            lora_targets=(
                r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$",
                r"blocks\.\d+\.ffn\.net\.(0\.proj|2)$",
            ),
            extra={
                "latent_channels": self.latent_channels,
                "codec": self.codec,
                "sigma_shift": float(cfg["sigma_shift"]),
                "sample_shift": float(cfg["sample_shift"]),
                "guidance_scale": float(cfg["guidance_scale"]),
                "sample_steps": int(cfg["sample_steps"]),
                "identifier_tokens": list(IDENTIFIER_TOKENS),
            },
        )

    # -- text ---------------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both (B, L) with L = max_text_len."""
        enc = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=int(self.config["max_text_len"]),
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """(B, L, D) embeddings, zero beyond each prompt's length, and the (B, L) bool mask of real tokens."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, mask = self.tokenize(prompts)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return PromptEmbeds(hidden.to(self.dtype), mask.bool())

    # -- codec --------------------------------------------------------------------------------------------
    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[2] != 3:
            raise SetseqError(f"expected a video batch (B, F, 3, H, W), got shape {tuple(video.shape)}")
        h, w = video.shape[-2:]
        if h % self.cell or w % self.cell:
            raise SetseqError(f"video size {h}x{w} is not a multiple of {self.cell}", "resize the video")

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a `frames`-frame video (the VAE keeps the first frame and halves the rest)."""
        return 1 + (frames - 1) // self.temporal

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> normalised latents (B, C, F', H/c, W/c).

        VAE codec: the posterior mean, normalised by the VAE's latent statistics. Pixel codec: normalise per
        colour, then space-to-depth (C = 3*c*c, F' = F)."""
        self._check_video(video)
        if self.codec == "vae":
            b, f = video.shape[:2]
            if self.temporal == 1:  # frame-wise VAE: every frame alone, as a 1-frame video
                x = video.reshape(b * f, 1, *video.shape[2:])
            elif (f - 1) % 4:
                raise SetseqError(f"the toy VAE encodes 4k+1 frames, got {f}")
            else:
                x = video
            x = x.to(self.device, self.dtype).permute(0, 2, 1, 3, 4)  # (B', 3, F', H, W)
            mu = self.vae.encode(x).latent_dist.mode().float()
            lat = (mu - self._lat_mean.to(mu.device)) / self._lat_std.to(mu.device)
            if self.temporal == 1:
                lat = lat.reshape(b, f, *lat.shape[1:]).squeeze(3).permute(0, 2, 1, 3, 4)
            return lat.contiguous().to(self.dtype)
        b, f, _, h, w = video.shape
        c = self.cell
        x = video.to(torch.float32).permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
        x = (x - self._pix_mean.to(x.device)) / self._pix_std.to(x.device)
        x = x.reshape(b, 3, f, h // c, c, w // c, c).permute(0, 1, 4, 6, 2, 3, 5)  # (B, 3, c, c, F, h, w)
        return x.reshape(b, 3 * c * c, f, h // c, w // c).to(self.device, self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, F', h, w) -> video (B, F, 3, h*c, w*c). Pixel codec: the exact inverse of
        `encode_video`, not clamped; VAE codec: the VAE's decoder, in [-1, 1]."""
        b, ch, f, h, w = latents.shape
        c = self.cell
        if self.codec == "vae":
            if ch != self.latent_channels:
                raise SetseqError(f"expected {self.latent_channels} latent channels, got {ch}")
            z = latents.float() * self._lat_std.to(latents.device) + self._lat_mean.to(latents.device)
            if self.temporal == 1:  # frame-wise: (B*F, C, 1, h, w)
                z = z.permute(0, 2, 1, 3, 4).reshape(b * f, ch, 1, h, w)
            out = self.vae.decode(z.to(self.device, self.dtype)).sample.float()  # (B', 3, F', H, W)
            if self.temporal == 1:
                out = out.reshape(b, f, 3, h * c, w * c)
                return out.contiguous()
            return out.permute(0, 2, 1, 3, 4).contiguous()
        if ch != 3 * c * c:
            raise SetseqError(f"expected {3 * c * c} latent channels, got {ch}")
        x = (
            latents.to(torch.float32).reshape(b, 3, c, c, f, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        )  # (B,3,F,h,c,w,c)
        x = x.reshape(b, 3, f, h * c, w * c)
        x = x * self._pix_std.to(x.device) + self._pix_mean.to(x.device)
        return x.permute(0, 2, 1, 3, 4).contiguous()  # (B, F, 3, H, W)

    # -- diffusion ----------------------------------------------------------------------------------------
    def _coordinates(self, like: torch.Tensor) -> torch.Tensor:
        """(B, 2, F, h, w) planes of each latent cell's (y, x) centre in [-1, 1]."""
        b, _, f, h, w = like.shape
        ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) / w * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # (2, h, w)
        return grid[None, :, None].expand(b, 2, f, h, w)

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training noise levels, drawn exactly as the toy model was pretrained."""
        return _draw_sigmas(
            batch,
            shift=float(self.config["sigma_shift"]),
            weighting=str(self.config["sigma_weighting"]),
            generator=generator,
            device=self.device,
        )

    def predict(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity (noise - x0) for noisy latents (B, C, F, h, w) at sigmas (B,). self_cond None -> zeros."""
        if self_cond is None:
            self_cond = torch.zeros_like(noisy)
        parts = [noisy, self_cond.to(noisy.dtype)]
        if int(self.config.get("coord_channels", 0)):
            parts.append(self._coordinates(noisy))
        x = torch.cat(parts, dim=1).to(self.device, self.dtype)  # (B, 2C, F, h, w)
        t = (sigmas.to(self.device, torch.float32) * 1000.0).expand(x.shape[0])
        out = self.transformer(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=prompt.embeds.to(self.device, self.dtype),
            return_dict=False,
        )[0]
        if self.config.get("prediction", "velocity") == "x0":
            # out is x0; v = (x_sigma - x0) / sigma, the denominator clamped so that low noise levels stay stable
            s = t.to(out.dtype).div(1000.0).clamp_min(float(self.config["x0_sigma_min"]))
            out = (noisy.to(out.dtype) - out) / s.reshape(-1, *([1] * (out.ndim - 1)))
        return out

    @torch.no_grad()
    def generate_batch(
        self,
        prompts: list[str],
        negative_prompt: str = "",
        *,
        seeds: list[int] | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        shift: float | None = None,
        self_conditioning: bool | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Text-to-video for several prompts at once: (B, F, 3, H, W) in [-1, 1], on CPU.

        Sample b starts from the noise of `torch.Generator().manual_seed(seeds[b])`, so a prompt gives the same
        video alone or in a batch. Euler steps on the flow-matching ODE from sigma=1 to 0 with the time shift,
        classifier-free guidance (cond and uncond in one batch) and self-conditioning on each branch's own
        previous x0 estimate.
        """
        cfg = self.config
        frames = int(cfg["frames"] if frames is None else frames)
        height = int(cfg["height"] if height is None else height)
        width = int(cfg["width"] if width is None else width)
        steps = int(cfg["sample_steps"] if steps is None else steps)
        guidance_scale = float(cfg["guidance_scale"] if guidance_scale is None else guidance_scale)
        shift = float(cfg["sample_shift"] if shift is None else shift)
        self_conditioning = bool(cfg["sample_self_cond"] if self_conditioning is None else self_conditioning)
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        # 1. check inputs
        m, sm = self.info.frame_multiple, self.info.spatial_multiple
        if frames < 1 or (frames - 1) % m:
            raise SetseqError(
                f"frames={frames} is not {m}k+1",
                f"use e.g. {m * ((frames - 1) // m) + 1} or {self.info.frames}",
            )
        if height % sm or width % sm:
            raise SetseqError(
                f"size {height}x{width} is not a multiple of {sm}",
                f"use e.g. {self.info.height}x{self.info.width}",
            )
        if steps < 1:
            raise SetseqError(f"steps={steps} must be at least 1")
        if len(seeds) != len(prompts):
            raise SetseqError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        b = len(prompts)
        # 2. prompts: cond then uncond
        use_cfg = guidance_scale != 1.0
        embeds = self.encode_prompt(list(prompts) + ([negative_prompt] * b if use_cfg else []))
        # 3. initial noise, one generator per sample
        shape = (self.latent_channels, self.latent_frames(frames), height // self.cell, width // self.cell)
        lat = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )
        lat = lat.to(self.device, torch.float32)  # (B, C, F, h, w); the ODE state is kept in fp32
        # 4. Euler steps
        sig = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), shift).tolist()
        x0_prev = torch.zeros_like(torch.cat([lat, lat]) if use_cfg else lat)
        it = range(steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="toy generate", leave=False)
        for i in it:
            s, s_next = sig[i], sig[i + 1]
            inp = torch.cat([lat, lat]) if use_cfg else lat
            sig_t = torch.full((inp.shape[0],), s, device=self.device)
            v = self.predict(inp, sig_t, embeds, self_cond=x0_prev if self_conditioning else None).float()
            if self_conditioning:
                x0_prev = x0_from_velocity(inp, v, sig_t)
            if use_cfg:
                v_c, v_u = v.chunk(2)
                v = v_u + guidance_scale * (v_c - v_u)
            lat = lat + (s_next - s) * v
        # 5. decode
        return self.decode_latents(lat).clamp(-1.0, 1.0).cpu()

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Text-to-video with CFG: (F, 3, H, W) in [-1, 1] on CPU, deterministic for a seed.

        steps / guidance_scale None -> the model's measured defaults (`toy_config.json`)."""
        return self.generate_batch(
            [prompt],
            negative_prompt,
            seeds=[seed],
            frames=frames,
            height=height,
            width=width,
            steps=steps,
            guidance_scale=guidance_scale,
            progress=progress,
        )[0]

    def num_parameters(self) -> dict[str, int]:
        return {
            "transformer": sum(p.numel() for p in self.transformer.parameters()),
            "text_encoder": sum(p.numel() for p in self.text_encoder.parameters()),
        }


@register_backbone("toy")
def load_toy(
    model_id: str = "toy", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ToyBackbone:
    """Registry loader: "toy" (the default) and "toy-large" are the models shipped with setseq
    (`SHIPPED_TOY_MODELS`); any other id is a local toy model folder."""
    components = load_toy_components(model_id)
    return ToyBackbone(components, model_id=model_id, device=device, dtype=dtype)


def steps_for_minutes(minutes: float, seconds_per_step: float) -> int:
    """How many optimizer steps fit in a wall-clock budget (used by the training script's planner)."""
    return max(1, math.floor(minutes * 60.0 / max(seconds_per_step, 1e-6)))
