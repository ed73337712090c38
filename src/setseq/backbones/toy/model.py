"""The toy backbone: the toy model behind the `Backbone` protocol, registered as "toy".

- codec (`"codec"` in toy_config.json): `"vae"`, the shipped models' tiny `AutoencoderKLWan`
  (`vae_codec.py`), or `"pixel"`, the lossless space-to-depth codec of the first design (`pixel_codec.py`).
- DiT: diffusers `WanTransformer3DModel`, patch (1, 2, 2), i.e. 16 tokens a latent frame (144 for a 9-frame
  clip with the frame-wise VAE). Its input is the noisy latent concatenated with a self-conditioning estimate
  of x0 (zeros when absent) and two coordinate planes, so `in_channels = 2 * C + 2` (Chen and Li's FIT / RIN
  self-conditioning: the base model was trained with it on half of its steps, which is what the paper's
  context-aware self-conditioning regularizer needs).
- text: the word-level tokenizer of `tokenizer.py` and a tiny `UMT5EncoderModel`. Embeddings beyond each
  prompt's length are zeroed, the way Wan pads.
"""

from __future__ import annotations

import numpy as np
import torch

from setseq.backbones.base import Backbone, BackboneInfo, CrossAttention, Family, check_image_input
from setseq.backbones.toy.config import codec_name
from setseq.backbones.toy.files import RESTORE_HINT, ToyComponents, load_toy_components, toy_fingerprint
from setseq.backbones.toy.pixel_codec import PixelCodec
from setseq.backbones.toy.sampler import euler_cfg_sample, seeded_noise
from setseq.backbones.toy.tokenizer import IDENTIFIER_TOKENS
from setseq.backbones.toy.vae_codec import VaeCodec
from setseq.backbones.wan import comfyui_slot, wan_cross_attention
from setseq.errors import SetseqError
from setseq.functional.flow_matching import sample_sigmas as _draw_sigmas
from setseq.functional.flow_matching import sigma_share
from setseq.memory import meta_diffusers
from setseq.prompts import ImageCondition, PromptEmbeds


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    current = next(module.parameters()).dtype
    return module.to(device) if current == dtype else module.to(device, dtype)


class ToyBackbone(Backbone, own=("generate_batch",)):  # (batched generation: scripts/eval_toy.py)
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
        self.codec = codec_name(cfg)
        self.vae = None
        if self.codec == "vae":
            if components.vae is None:
                raise SetseqError('toy model config says codec "vae" but no VAE was given', RESTORE_HINT)
            self.vae = _move(components.vae, self.device, dtype)
            self.latent_codec: VaeCodec | PixelCodec = VaeCodec(self.vae, cfg, self.device, dtype)
        else:
            self.latent_codec = PixelCodec(cfg, self.device, dtype)
        self.latent_channels = self.latent_codec.channels
        self.cell = self.latent_codec.cell  # spatial compression
        self.temporal = self.latent_codec.temporal  # temporal compression after the first frame
        self.info = BackboneInfo(
            name="toy",
            model_id=str(model_id),
            fingerprint=toy_fingerprint(components),
            legacy_fingerprint=toy_fingerprint(components, legacy=True),
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

    def _latent_frames(self, frames: int) -> int:
        """Latent frames of a `frames`-frame video (a temporal VAE keeps the first frame and halves the rest)."""
        return 1 + (frames - 1) // self.temporal

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> normalised latents (B, C, F', H/c, W/c).

        VAE codec: the posterior mean, normalised by the VAE's latent statistics. Pixel codec: normalise per
        colour, then space-to-depth (C = 3*c*c, F' = F)."""
        self._check_video(video)
        return self.latent_codec.encode(video)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, F', h, w) -> video (B, F, 3, h*c, w*c). Pixel codec: the exact inverse of
        `encode_video`, not clamped; VAE codec: the VAE's decoder, in [-1, 1]."""
        return self.latent_codec.decode(latents)

    # -- diffusion ----------------------------------------------------------------------------------------
    def _coordinates(self, like: torch.Tensor) -> torch.Tensor:
        """(B, 2, F, h, w) planes of each latent cell's (y, x) centre in [-1, 1]."""
        b, _, f, h, w = like.shape
        ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) / w * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))  # (2, h, w)
        return grid[None, :, None].expand(b, 2, f, h, w)

    def sample_sigmas(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        between: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Training noise levels, drawn exactly as the toy model was pretrained."""
        return _draw_sigmas(
            batch,
            shift=float(self.config["sigma_shift"]),
            weighting=str(self.config["sigma_weighting"]),
            generator=generator,
            device=self.device,
            between=between,
        )

    def sigma_share(self, lo: float, hi: float) -> float:
        shift, weighting = float(self.config["sigma_shift"]), str(self.config["sigma_weighting"])
        return sigma_share(lo, hi, shift=shift, weighting=weighting)

    def predict(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        self_cond: torch.Tensor | None = None,
        image: ImageCondition | None = None,
    ) -> torch.Tensor:
        """Velocity (noise - x0) for noisy latents (B, C, F, h, w) at sigmas (B,). self_cond None -> zeros.
        The toy model is text-to-video only: it takes no `image`."""
        if image is not None:
            raise SetseqError(
                "the toy model takes no first frame (it is text-to-video only)", "drop the image"
            )
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

    def cross_attention(self) -> CrossAttention:
        return wan_cross_attention(self.transformer)  # (a diffusers WanTransformer3DModel)

    @torch.no_grad()
    def meta_transformer(self) -> torch.nn.Module:
        return meta_diffusers(self.transformer)  # (a diffusers WanTransformer3DModel)

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

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
        video alone or in a batch. The sampler (`sampler.py`): Euler steps on the flow-matching ODE from
        sigma=1 to 0 with the time shift, classifier-free guidance and self-conditioning. Arguments left None
        take the model's measured defaults (`toy_config.json`).
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
                f"use e.g. {m * ((frames - 1) // m) + 1} or {m * ((frames - 1) // m) + 1 + m}"
                if frames > 1
                else f"use e.g. {self.info.frames}",
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
        # 2. initial noise, one generator per sample
        shape = (self.latent_channels, self._latent_frames(frames), height // self.cell, width // self.cell)
        noise = seeded_noise(shape, seeds)
        # 3. sample
        lat = euler_cfg_sample(
            self,
            prompts,
            negative_prompt,
            noise,
            steps=steps,
            guidance_scale=guidance_scale,
            shift=shift,
            self_conditioning=self_conditioning,
            progress=progress,
        )
        # 4. decode
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
        image: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Text-to-video with CFG: (F, 3, H, W) in [-1, 1] on CPU, deterministic for a seed.

        steps / guidance_scale None -> the model's measured defaults (`toy_config.json`). A first frame
        (`image`) is refused: the toy model is text-to-video only."""
        check_image_input(self.info, image is not None)
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


def load_toy(
    model_id: str = "toy", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ToyBackbone:
    """Registry loader: "toy" (the default) and "toy-large" are the models shipped with setseq
    (`SHIPPED_TOY_MODELS`); any other id is a local toy model folder."""
    components = load_toy_components(model_id)
    return ToyBackbone(components, model_id=model_id, device=device, dtype=dtype)


# The toy model is a Wan DiT: its LoRA has Wan's ComfyUI names. Its tiny models are built by
# `build_toy_components` (tests/conftest.py's tiny_toy_dir); it has no diffusers pipeline, no bench shape.
FAMILY = Family("toy", load_toy, comfyui=comfyui_slot, fps=8.0)
