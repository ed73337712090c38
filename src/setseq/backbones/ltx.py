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

import hashlib
import json
import math

import torch

from setseq.backbones.base import BackboneInfo, PromptEmbeds, load_diffusers_pipeline, register_backbone
from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm

LTX_LORA_TARGETS = (
    r"^transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$",
)
MAX_SEQUENCE_LENGTH = 128  # LTXPipeline's default text length
FRAME_RATE = (
    25  # LTXPipeline's default frame_rate: part of the DiT's RoPE scale, the same in training and sampling
)


# Copied from setseq.backbones.wan._fingerprint
def _fingerprint(configs: list[dict]) -> str:
    """Architecture identity: a hash of the component configs (LoRA compatibility, part of cache keys)."""
    return hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Copied from setseq.backbones.wan._plain_config
def _plain_config(cfg) -> dict:
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


class LTXBackbone:
    """LTX-Video T2V behind the `Backbone` protocol."""

    def __init__(self, pipe, model_id: str, device: torch.device, dtype: torch.dtype) -> None:
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.device = device
        self.dtype = dtype
        vcfg, tcfg, scfg = self.vae.config, self.transformer.config, pipe.scheduler.config
        self.latents_mean = self.vae.latents_mean.detach().float().cpu().view(1, -1, 1, 1, 1)
        self.latents_std = self.vae.latents_std.detach().float().cpu().view(1, -1, 1, 1, 1)
        self.scaling_factor = float(vcfg.scaling_factor)
        ss, st = int(self.vae.spatial_compression_ratio), int(self.vae.temporal_compression_ratio)
        self.patch, self.patch_t = int(tcfg.patch_size), int(tcfg.patch_size_t)
        self.rope_scale = (st / FRAME_RATE, ss, ss)
        small = tcfg.num_layers * tcfg.num_attention_heads * tcfg.attention_head_dim < 4096 * 8
        # LTXPipeline's defaults (512x704, 161 frames); tiny test models default to a tiny size.
        height, width, frames = (64, 64, 9) if small else (512, 704, 161)
        if scfg.get("use_dynamic_shifting", False):
            tokens = ((frames - 1) // st + 1) * (height // ss) * (width // ss)
            mu = calculate_shift(
                tokens,
                scfg.get("base_image_seq_len", 256),
                scfg.get("max_image_seq_len", 4096),
                scfg.get("base_shift", 0.5),
                scfg.get("max_shift", 1.15),
            )
            self.sigma_shift = math.exp(mu)  # the exponential time shift at mu is the SD3 shift exp(mu)
        else:
            self.sigma_shift = float(scfg.get("shift", 1.0))
        self.info = BackboneInfo(
            name="ltx",
            model_id=model_id,
            fingerprint=_fingerprint(
                [_plain_config(tcfg), _plain_config(vcfg), self.text_encoder.config.to_dict()]
            ),
            height=height,
            width=width,
            frames=frames,
            frame_multiple=st * self.patch_t,
            spatial_multiple=ss * self.patch,
            supports_self_conditioning=False,
            lora_targets=LTX_LORA_TARGETS,
            extra={"sigma_shift": self.sigma_shift, "vae_scale_factor_spatial": ss, "patch_size": self.patch},
        )

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        # Same steps as LTXPipeline._get_t5_prompt_embeds.
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=MAX_SEQUENCE_LENGTH,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        hidden = self.text_encoder(tok.input_ids.to(self.device))[0].float()  # (B, L, D)
        return PromptEmbeds(hidden, tok.attention_mask.to(self.device).bool())

    # -- video <-> latents -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        x = video.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W) -> (B, 3, F, H, W)
        z = self.vae.encode(x).latent_dist.mode().float()  # (B, C, f, h, w); the mean: deterministic caches
        mean, std = self.latents_mean.to(z.device), self.latents_std.to(z.device)
        return (z - mean) * self.scaling_factor / std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self.latents_mean.to(latents.device), self.latents_std.to(latents.device)
        z = latents.float() * std / self.scaling_factor + mean
        temb = None
        if self.vae.config.timestep_conditioning:  # LTX 0.9.1+ VAEs: decode at timestep 0, no added noise
            temb = torch.zeros(z.shape[0], device=z.device, dtype=self.vae.dtype)
        x = self.vae.decode(z.to(self.vae.dtype), temb, return_dict=False)[0]  # (B, 3, F, H, W)
        return x.float().clamp(-1, 1).permute(0, 2, 1, 3, 4)

    # -- diffusion -------------------------------------------------------------------------------------------
    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return fm.sample_sigmas(
            batch, shift=self.sigma_shift, weighting="uniform", generator=generator, device=self.device
        )

    def predict(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from diffusers import LTXPipeline

        if self_cond is not None:
            raise SetseqError(
                "LTX-Video has no self-conditioning input",
                "set regularizers.self_conditioning=0 for this backbone",
            )
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

    @torch.no_grad()
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
        self.pipe.set_progress_bar_config(disable=not progress)
        out = self.pipe(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            height=height or self.info.height,
            width=width or self.info.width,
            num_frames=frames or self.info.frames,
            frame_rate=FRAME_RATE,
            num_inference_steps=steps or 50,
            guidance_scale=3.0 if guidance_scale is None else guidance_scale,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="pt",
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        ).frames  # (B, F, 3, H, W) in [0, 1]
        return (out[0].float().cpu() * 2.0 - 1.0).clamp(-1, 1)


@register_backbone("ltx")
def load_ltx(model_id: str, device: torch.device, dtype: torch.dtype) -> LTXBackbone:
    """Load a diffusers-format LTX-Video T2V checkpoint (local folder or hub id). Only safetensors are read."""
    from diffusers import LTXPipeline

    # The VAE stays fp32 in bf16 runs: LTXPipeline casts latents to the VAE's dtype before decoding.
    pipe = load_diffusers_pipeline(LTXPipeline, model_id, device, dtype, "LTX-Video", vae_fp32=True)
    return LTXBackbone(pipe, str(model_id), device, dtype)
