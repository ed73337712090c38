"""LTX-Video text-to-video through diffusers (`LTXPipeline`, `LTXVideoTransformer3DModel`,
`AutoencoderKLLTXVideo`): LTX-Video 0.9.x in diffusers layout.

- Objective: rectified flow, the same convention as Wan (x_sigma = (1 - sigma) x0 + sigma noise, the DiT
  predicts noise - x0, its timestep input is sigma * 1000), so the default flow-matching target applies.
  Training sigmas: u uniform, then the scheduler's own time shift. LTX's scheduler shifts by a
  resolution-dependent mu (`calculate_shift` of the token count); `sample_sigmas` does not see the latent, so
  it uses the mu of the backbone's default clip (`info.height` x `info.width` x `info.frames`), documented
  in `info.extra["sigma_shift"]`.
- Latents: the VAE's posterior mean, normalised per channel with the VAE's `latents_mean` / `latents_std`
  and `scaling_factor`, the inverse of what `LTXPipeline` does before decoding. The DiT takes packed tokens
  (B, f*h*w, C) plus the latent grid size; `predict` packs with the pipeline's `_pack_latents`, passes the
  grid and the pipeline's RoPE scale (temporal_compression / 25 fps, spatial, spatial), and unpacks.
- Shapes: the VAE compresses 8x in time and 32x in space, so clips are 8k+1 frames and sizes multiples of 32.
- Single frames (stage 1): the VAE is causal: one frame encodes to one latent frame, the first-frame slot
  that holds exactly one frame (every later latent frame holds 8). This is the same 1-frame latent
  `LTXImageToVideoPipeline` makes from its conditioning image, and the DiT takes any number of latent
  frames, so stage 1 trains on it as is (no repetition). Note that the clip's other latent frames summarise
  8 frames each, so the identity learned on first-slot latents reaches the rest of a clip through the DiT.
- Text: T5 (128 tokens), with T5's own output at pad positions and the attention mask passed to the DiT,
  exactly as the pipeline does. Token masking clears a dropped token's mask bit, which the DiT honours.
- LoRA targets: every linear of self-attention (`attn1`), cross-attention to the text (`attn2`) and the FFN
  (`ff.net.0.proj`, `ff.net.2`) in each `transformer_blocks.N`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import BenchShape, Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer, tiny_t5
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds

LTX_LORA_TARGETS = (
    r"^transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$",
)
# LTXPipeline's default frame_rate: part of the DiT's RoPE scale, the same in training and sampling
FRAME_RATE = 25
# LTXPipeline's values for the scheduler keys of the dynamic shift that a config may lack
LTX_SHIFT_DEFAULTS = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


def resolution_shift(scheduler_config: dict, tokens: int, defaults: dict[str, float]) -> float:
    """The time shift of the training sigmas for a clip of `tokens` DiT tokens: the scheduler's static `shift`,
    or with `use_dynamic_shifting` exp(mu), mu the pipeline's `calculate_shift` of the token count (linear
    between `base_shift` at `base_image_seq_len` and `max_shift` at `max_image_seq_len`; the exponential time
    shift at mu is the SD3 shift exp(mu)). `defaults`: the pipeline's values for keys the config lacks."""
    # (heavy to import: loaded where used)
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    keys = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")
    return math.exp(calculate_shift(tokens, *(scheduler_config.get(k, defaults[k]) for k in keys)))


class LTXBackbone(DiffusersBackbone):
    """LTX-Video T2V behind the `Backbone` protocol."""

    name, label, pipeline_class = "ltx", "LTX-Video", "LTXPipeline"
    vae_fp32 = True  # LTXPipeline casts latents to the VAE's dtype before decoding
    default_steps, default_guidance = 50, 3.0
    text_length = 128  # LTXPipeline's default text length
    _native_size = (512, 704, 161)  # LTXPipeline's default height, width, frames
    _shift_defaults = LTX_SHIFT_DEFAULTS

    def setup(self, model_id: str) -> dict[str, Any]:
        vcfg, tcfg, scfg = self.vae.config, self.transformer.config, self.pipe.scheduler.config
        # latents = (z - latents_mean) * scaling_factor / latents_std, the inverse of LTXPipeline's decoding
        self.latents_mean = self.vae.latents_mean.detach().float().cpu().view(1, -1, 1, 1, 1)
        self.latents_std = self.vae.latents_std.detach().float().cpu().view(1, -1, 1, 1, 1)
        self.scaling_factor = float(vcfg.scaling_factor)
        ss, st = int(self.vae.spatial_compression_ratio), int(self.vae.temporal_compression_ratio)
        self.patch, self.patch_t = int(tcfg.patch_size), int(tcfg.patch_size_t)
        self.rope_scale = (st / FRAME_RATE, ss, ss)
        # The pipeline's default size; tiny test models default to a tiny size.
        height, width, frames = (64, 64, 9) if self.is_tiny() else self._native_size
        tokens = ((frames - 1) // st + 1) * (height // ss) * (width // ss)
        self.sigma_shift = resolution_shift(scfg, tokens, self._shift_defaults)
        return dict(
            height=height,
            width=width,
            frames=frames,
            frame_multiple=st * self.patch_t,
            spatial_multiple=ss * self.patch,
            lora_targets=LTX_LORA_TARGETS,
            extra={"sigma_shift": self.sigma_shift, "vae_scale_factor_spatial": ss, "patch_size": self.patch},
        )

    # Text: the default `encode_prompt`, LTXPipeline._get_t5_prompt_embeds's steps (the mask goes to the DiT).

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        temb = None
        if self.vae.config.timestep_conditioning:  # LTX 0.9.1+ VAEs: decode at timestep 0, no added noise
            temb = torch.zeros(z.shape[0], device=z.device, dtype=self.vae.dtype)
        return self.vae.decode(z, temb, return_dict=False)[0]

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"frame_rate": FRAME_RATE}

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        # (heavy to import: loaded where used)
        from diffusers import LTXPipeline

        _, _, f, h, w = noisy.shape
        grid = (f // self.patch_t, h // self.patch, w // self.patch)
        tokens = LTXPipeline._pack_latents(
            noisy.to(self.device, self.dtype), self.patch, self.patch_t
        )  # (B, N, D)
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=prompt.embeds.to(self.device, self.dtype),
            timestep=sigmas.to(self.device).float() * 1000.0,
            encoder_attention_mask=prompt.mask.to(self.device),
            num_frames=grid[0],
            height=grid[1],
            width=grid[2],
            rope_interpolation_scale=self.rope_scale,
            return_dict=False,
        )[0]
        out = LTXPipeline._unpack_latents(out, *grid, self.patch, self.patch_t)  # (B, C, f, h, w)
        return out.float()


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
def ltx_scheduler():
    """The scheduler of LTX-Video 0.9 and LTX-2: a resolution-dependent shift (mu from the token count)."""
    # (heavy to import: loaded where used)
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )  # fmt: skip


def build_tiny_ltx(folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 8) -> Path:
    """Write a tiny random LTX-Video T2V pipeline whose VAE has LTX's real strides (32 spatial, 8 temporal:
    a 4x4 pixel patch and three spatio-temporal downsamplings), 8 latent channels, patch 1.

    Transformer after diffusers' `tests/pipelines/ltx/test_ltx.py`."""
    # (heavy to import: loaded where used)
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=32)
    text_encoder = tiny_t5(len(tokenizer))
    transformer = LTXVideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, patch_size=1, patch_size_t=1, num_attention_heads=4,
        attention_head_dim=8, cross_attention_dim=32, num_layers=layers, caption_channels=32,
    ).eval()  # fmt: skip
    scaling = (True, True, True, False)
    vae = AutoencoderKLLTXVideo(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=scaling, decoder_spatio_temporal_scaling=scaling,
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=4,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()  # fmt: skip
    scheduler = ltx_scheduler()
    pipe = LTXPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# -- ComfyUI's names -------------------------------------------------------------------------------------------
# ComfyUI's LTX-Video DiT (comfy/ldm/lightricks/model.py) names its blocks as diffusers does
# (transformer_blocks.N.attn1.to_q, .ff.net.0.proj, ...): its generic loader maps diffusion_model.<module>.
# Its LTX-2 DiT (comfy/ldm/lightricks/av_model.py, LTXAV) names the video stream's attn1 / attn2 / ff the same;
# comfy/lora.py maps <module> and diffusion_model.<module> for LTXV and LTXAV alike, and diffusers'
# LTX2Pipeline.load_lora_weights reads this layout too (Lightricks' own LTX-2 LoRAs use it).
_COMFY_LTX = re.compile(r"^transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|"
                        r"^transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$")  # fmt: skip


def comfyui_slot(module: str) -> tuple[str, int]:
    """(ComfyUI module name, slot) of a diffusers LTX-Video / LTX-2 module: the same name."""
    if not _COMFY_LTX.match(module):
        raise SetseqError(
            f"no ComfyUI name is known for module '{module}' of an LTX model",
            "export with --format diffusers instead",
        )
    return module, 0


FAMILY = Family(
    "ltx",
    LTXBackbone.load,
    fps=25.0,
    pipelines=("LTXPipeline",),
    comfyui=comfyui_slot,
    shapes={
        "ltx": BenchShape(
            "ltx",
            "LTXVideoTransformer3DModel",
            dict(
                in_channels=128,
                out_channels=128,
                patch_size=1,
                patch_size_t=1,
                num_attention_heads=32,
                attention_head_dim=64,
                cross_attention_dim=2048,
                num_layers=28,
                caption_channels=4096,
            ),  # fmt: skip
            128,
            128,
            4096,
            note="LTX-Video 0.9 (2B)",
        )
    },
    tiny=(TinyModel("ltx", build_tiny_ltx, "LTXPipeline", 9, (64, 64), 2 * (4 + 4 + 2)),),
    backbone=LTXBackbone,
)
