"""Wan 2.1 / 2.2 through diffusers (`WanPipeline`, `WanImageToVideoPipeline`, `WanTransformer3DModel`,
`AutoencoderKLWan`).

Loads any diffusers-format Wan T2V checkpoint from a local folder or a hub id. Latents are normalised with
the VAE's `latents_mean` / `latents_std`, exactly as `WanPipeline` un-normalises them before decoding.

- Wan 2.2 TI2V-5B (`expand_timesteps=True` in model_index.json): a 48-channel VAE that first folds 2x2 pixels
  into channels (stride 16 in space, 4 in time, so sizes are multiples of 32) and a DiT that takes one timestep
  per latent patch: `predict` expands each sample's timestep over its patches, as `WanPipeline` does.
- Single frames (stage 1): the VAE is causal, one frame encodes to one latent frame (Wan trains on images as
  1-frame videos), so stage 1 uses it as is.
- Wan 2.2 A14B (T2V): two experts, `transformer` for the high-noise timesteps (t >= boundary_ratio x 1000)
  and `transformer_2` for the rest, as `WanPipeline` switches them. `WanExperts` holds both as one module
  (`high`, `low`), routes each training sample to the expert its timestep belongs to (with per-step routing,
  `model.expert_routing=step`, a step's timesteps all fall in one expert's range: `expert_sigmas`), and
  carries one set of LoRA layers per expert (module names `high.blocks...`, `low.blocks...`), trained in the same run. The
  exports are one file per expert (`*_high_noise`, `*_low_noise`), the way A14B LoRAs are shared; diffusers
  loads the low-noise one with `load_lora_weights(..., load_into_transformer_2=True)`.
- Image-to-video. A folder whose model_index.json names `WanImageToVideoPipeline` (Wan 2.1 I2V 14B 480P/720P:
  with a CLIP `image_encoder` + `image_processor`; Wan 2.2 I2V A14B: two experts, no image encoder) is loaded
  with that class. Its DiT takes 36 input channels (16 noisy latent + 4 first-frame mask + 16 latent of the
  image followed by zero frames) and, in 2.1, CLIP image tokens through `attn2.add_k_proj` / `add_v_proj`:
  `info.image == "required"`. Training on it conditions each stage the way it sees its data:
  stage 2 (the clip) on the clip's own first frame, exactly as `WanImageToVideoPipeline.prepare_latents` and
  `encode_image` build it (`image_condition`, cached with the latents); stage 1 (single frames) with the
  condition dropped (`predict(image=None)`: mask 0, the latent of a mid-gray frame, CLIP tokens of a gray
  image), since a 1-frame clip's first-frame condition would be its own target and teach the LoRA nothing.
  A run trained on the T2V model of the same size fits too (same module names and shapes). Wan 2.2 TI2V-5B (a `WanPipeline` with
  `expand_timesteps`) is one model for both tasks: `info.image == "optional"`; given an image, generation runs
  `WanImageToVideoPipeline` on the same components, which pins the first latent frame to the image's latent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from setseq.backbones.base import BenchShape, CrossAttention, Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone, index_class_name
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer, tiny_umt5
from setseq.errors import SetseqError
from setseq.prompts import ImageCondition, PromptEmbeds

# Every linear of self-attention (attn1), cross-attention (attn2, incl. Wan 2.1 I2V's image projections)
# and FFN inside the DiT blocks. Names are those of diffusers' WanTransformer3DModel.
WAN_LORA_TARGETS = (
    r"^blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$",
    r"^blocks\.\d+\.attn2\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)$",
    r"^blocks\.\d+\.ffn\.net\.(0\.proj|2)$",
)
#: The names `WanExperts` gives its two DiTs (high-noise, low-noise): the module-name prefixes of a LoRA
#: trained on Wan 2.2 A14B, which `setseq.export` reads back to write one file per expert.
EXPERTS = ("high", "low")


class WanExperts(nn.Module):
    """Wan 2.2 A14B's two DiTs as one module: each sample goes to `high` when its timestep is at or above
    `boundary` (in timesteps, 0-1000), else to `low`, as `WanPipeline` picks them while sampling."""

    _supports_gradient_checkpointing = True

    def __init__(self, high: nn.Module, low: nn.Module, boundary: float) -> None:
        super().__init__()
        self.high, self.low = high, low
        self.boundary = float(boundary)

    @property
    def config(self):
        return self.high.config  # both experts share one architecture

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    def enable_gradient_checkpointing(self) -> None:
        self.high.enable_gradient_checkpointing()
        self.low.enable_gradient_checkpointing()

    def meta_like(self) -> WanExperts:
        """The same two architectures on the meta device (for memory and FLOP estimates)."""
        with torch.device("meta"):
            high = type(self.high).from_config(self.high.config).to(self.high.dtype)
            low = type(self.low).from_config(self.low.config).to(self.low.dtype)
        return WanExperts(high, low, self.boundary)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **kwargs) -> tuple[torch.Tensor]:
        kwargs["return_dict"] = False
        t = timestep.reshape(timestep.shape[0], -1)[:, 0]  # (B,) one timestep per sample
        # On the meta device (memory and FLOP estimates) there are no values: one expert stands for both.
        high = [False] * t.shape[0] if t.is_meta else (t >= self.boundary).tolist()
        if all(high) or not any(high):
            expert = self.high if high[0] else self.low
            return (expert(hidden_states=hidden_states, timestep=timestep, **kwargs)[0],)
        parts, order = [], []
        for expert, want in ((self.high, True), (self.low, False)):
            idx = [i for i, h in enumerate(high) if h == want]
            sub = {
                k: v[idx] if torch.is_tensor(v) and v.shape[:1] == t.shape else v for k, v in kwargs.items()
            }
            parts.append(expert(hidden_states=hidden_states[idx], timestep=timestep[idx], **sub)[0])
            order += idx
        out = torch.cat(parts)
        return (out[torch.argsort(torch.tensor(order, device=out.device))],)


def expert_sigmas(boundary: float) -> tuple[tuple[str, float, float], ...]:
    """Each expert's noise levels as (name, lowest sigma, highest sigma), float32 values. `WanBackbone.forward`
    gives the DiT t = sigma x 1000 in float32 and `WanExperts` sends t >= `boundary` to `high`: the edges are
    the two float32 sigmas either side of that line, so any sigma drawn within an expert's range runs it."""
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    s = torch.tensor(boundary / 1000.0, dtype=torch.float32)
    while float(s * 1000.0) < boundary:
        s = torch.nextafter(s, one)
    while float(torch.nextafter(s, zero) * 1000.0) >= boundary:
        s = torch.nextafter(s, zero)
    high, low = EXPERTS
    return ((high, float(s), 1.0), (low, 0.0, float(torch.nextafter(s, zero))))


class WanBackbone(DiffusersBackbone):
    """Wan (T2V, TI2V-5B, I2V) behind the `Backbone` protocol."""

    _i2v_pipe: Any = None  # TI2V-5B's image-to-video pipeline over the same components, made when first asked
    _i2v_class = "WanImageToVideoPipeline"  # the image-to-video pipeline a model_index.json may name

    name, label, pipeline_class = "wan", "Wan", "WanPipeline"
    vae_fp32 = True  # upcasting the VAE is the usual advice for Wan's VAE
    default_steps, default_guidance = 30, 5.0
    text_length = 512  # WanPipeline's default text length

    def setup(self, model_id: str) -> dict[str, Any]:
        pipe = self.pipe
        # An I2V DiT takes the image condition as extra input channels: it cannot run on a latent alone.
        self.image_to_video = type(pipe).__name__ == self._i2v_class
        targets, self.expert_meta = WAN_LORA_TARGETS, None
        if pipe.components.get("transformer_2") is not None:  # Wan 2.2 A14B
            ratio = pipe.config.get("boundary_ratio")
            if ratio is None:
                raise SetseqError(
                    f"{model_id} has two experts but no boundary_ratio in model_index.json",
                    "use the official Wan 2.2 A14B diffusers checkpoint (its model_index.json sets boundary_ratio)",
                )
            steps = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000))
            self.transformer = WanExperts(pipe.transformer, pipe.transformer_2, float(ratio) * steps)
            targets = tuple(p.replace("^", rf"^({'|'.join(EXPERTS)})\.", 1) for p in WAN_LORA_TARGETS)
            self.expert_meta = {"experts": list(EXPERTS), "boundary_ratio": float(ratio)}
            self.expert_sigmas = expert_sigmas(self.transformer.boundary)
        vcfg, tcfg = self.vae.config, self.transformer.config
        # Normalised as WanPipeline un-normalises before decoding: (z - latents_mean) / latents_std.
        self.latents_mean = torch.tensor(vcfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(vcfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        st = int(getattr(vcfg, "scale_factor_temporal", 4))
        ss = int(getattr(vcfg, "scale_factor_spatial", 8))
        patch = tuple(tcfg.patch_size)
        # Wan's schedulers sample in shifted time (flow_shift).
        self.sigma_shift = float(
            getattr(pipe.scheduler.config, "flow_shift", None) or getattr(pipe.scheduler.config, "shift", 3.0)
        )
        self.expand_timesteps = bool(getattr(pipe.config, "expand_timesteps", False))
        self.temporal_scale, self.spatial_scale = st, ss
        self._dropped: dict[tuple, ImageCondition] = {}  # the dropped first-frame condition, per latent shape
        small = self.is_tiny()
        return dict(
            # Wan's native 480p size (Wan 2.2 TI2V-5B: 720p, 704x1280); tiny test models default to a tiny size.
            height=32 if small else (704 if self.expand_timesteps else 480),
            width=32 if small else (1280 if self.expand_timesteps else 832),
            frames=9 if small else 33,
            frame_multiple=st,
            spatial_multiple=ss * patch[1],
            image="required" if self.image_to_video else ("optional" if self.expand_timesteps else "none"),
            lora_targets=targets,
            extra={"flow_shift": self.sigma_shift, "vae_scale_factor_spatial": ss, "patch_size": patch}
            | (self.expert_meta or {}),
        )

    def fingerprint_configs(self) -> list[dict]:
        return super().fingerprint_configs() + ([self.expert_meta] if self.expert_meta else [])

    def cross_attention(self) -> CrossAttention:
        return wan_cross_attention(self.transformer)

    def meta_transformer(self) -> nn.Module:
        if isinstance(self.transformer, WanExperts):  # (two DiTs: each built on the meta device)
            return self.transformer.meta_like()
        return super().meta_transformer()

    @classmethod
    def pipeline_for(cls, model_id: str) -> type:
        """The image-to-video pipeline (`WanImageToVideoPipeline`) when the checkpoint's model_index.json names
        it, else the text-to-video one (`WanPipeline`). A hub id's model_index.json is read through diffusers
        (the hub cache, else a download of that one file)."""
        # (heavy to import: loaded where used)
        import diffusers

        cls_name = index_class_name(model_id)
        return getattr(diffusers, cls._i2v_class if cls_name == cls._i2v_class else cls.pipeline_class)

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        # Same steps as WanPipeline._get_t5_prompt_embeds, keeping the attention mask for token masking.
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        ids, mask = self.tokenize([prompt_clean(p) for p in prompts])
        hidden = self.text_encoder(ids, mask).last_hidden_state.float()  # (B, L, D)
        real = mask.bool()
        hidden = hidden * real.unsqueeze(-1)  # Wan zero-pads beyond each prompt's length
        return PromptEmbeds(hidden, real)

    # -- diffusion -------------------------------------------------------------------------------------------
    def forward(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        image: ImageCondition | None = None,
    ) -> torch.Tensor:
        t = sigmas.to(self.device).float() * 1000.0  # (B,)
        if self.expand_timesteps:
            # Wan 2.2 TI2V takes one timestep per latent patch (all equal for text-to-video).
            p = self.transformer.config.patch_size
            n = (noisy.shape[2] // p[0]) * (noisy.shape[3] // p[1]) * (noisy.shape[4] // p[2])
            t = t[:, None].expand(-1, n)
        hidden, extra = noisy.to(self.dtype), {}
        if self.image_to_video:  # the first-frame condition as extra input channels (and CLIP tokens in 2.1)
            cond = (image if image is not None else self.dropped_condition(noisy)).to(
                noisy.device, self.dtype
            )
            hidden = torch.cat([hidden, cond.latent], dim=1)
            if cond.tokens is not None:
                extra["encoder_hidden_states_image"] = cond.tokens
        out = self.transformer(
            hidden_states=hidden,
            timestep=t,
            encoder_hidden_states=prompt.embeds.to(self.dtype),
            return_dict=False,
            **extra,
        )[0]
        return out.float()

    # -- the first-frame condition of an image-to-video DiT (training) ------------------------------------------
    @torch.no_grad()
    def image_condition(self, video: torch.Tensor) -> ImageCondition:
        """The condition of clips whose first frame is given: video (B, F, 3, H, W) in [-1, 1] -> the mask
        and latent of the first frame followed by zero frames (`WanImageToVideoPipeline.prepare_latents`) and,
        with an image encoder (2.1), its CLIP tokens (`encode_image`); on the CPU, float32."""
        x = video.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
        first = torch.zeros_like(x)
        first[:, :, 0] = x[:, :, 0]
        return self._condition(first, given=True, pixels=video[:, 0])

    def dropped_condition(self, noisy: torch.Tensor) -> ImageCondition:
        """The condition of latents (B, C, f, h, w) with no first frame given: mask 0, the latent of mid-gray
        frames (the pipeline's zeros) and the CLIP tokens of a gray image; computed once per shape."""
        b, _, f, lh, lw = noisy.shape
        n, h, w = (f - 1) * self.temporal_scale + 1, lh * self.spatial_scale, lw * self.spatial_scale
        key = (f, lh, lw)
        if noisy.is_meta:  # memory and FLOP estimates: the shapes alone
            lat, tok = self._condition_shapes(f, lh, lw)
            c = ImageCondition(
                torch.zeros(lat, device="meta"), None if tok is None else torch.zeros(tok, device="meta")
            )
        elif key not in self._dropped:
            gray = torch.zeros(1, 3, n, h, w, device=self.device, dtype=self.vae.dtype)
            c = self._dropped[key] = self._condition(gray, given=False, pixels=gray[:, :, 0])
        else:
            c = self._dropped[key]
        tokens = None if c.tokens is None else c.tokens.expand(b, -1, -1)
        return ImageCondition(c.latent.expand(b, *c.latent.shape[1:]), tokens)

    def _condition_shapes(self, f: int, lh: int, lw: int) -> tuple[tuple, tuple | None]:
        z = int(self.vae.config.z_dim)
        enc = self.pipe.components.get("image_encoder")
        if enc is None:
            return (1, self.temporal_scale + z, f, lh, lw), None
        vc = enc.config
        return (1, self.temporal_scale + z, f, lh, lw), (
            1,
            (vc.image_size // vc.patch_size) ** 2 + 1,
            vc.hidden_size,
        )

    def _condition(self, video: torch.Tensor, *, given: bool, pixels: torch.Tensor) -> ImageCondition:
        """Mask (the first latent frame given or not) + normalised latent of `video` (B, 3, F, H, W), and,
        with an image encoder, the CLIP tokens of `pixels` (B, 3, H, W) in [-1, 1] seen as uint8 images."""
        z = self.vae.encode(video).latent_dist.mode().float()
        z = (z - self.latents_mean.to(z.device)) / self.latents_std.to(z.device)
        b, _, f, lh, lw = z.shape
        mask = torch.zeros(b, self.temporal_scale, f, lh, lw, device=z.device)
        if given:
            mask[:, :, 0] = 1.0  # the first latent frame (the first pixel frame, repeated 4x) is given
        tokens = None
        enc = self.pipe.components.get("image_encoder")
        if enc is not None:
            # (heavy to import: loaded where used)
            from PIL import Image

            px = pixels.permute(0, 2, 3, 1)  # (B, H, W, 3)
            u8 = ((px.float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
            images = [Image.fromarray(np.ascontiguousarray(a), "RGB") for a in u8]
            inputs = self.pipe.image_processor(images=images, return_tensors="pt").to(enc.device)
            tokens = enc(**inputs, output_hidden_states=True).hidden_states[-2].float().cpu()
        return ImageCondition(torch.cat([mask, z], dim=1).cpu(), tokens)

    # -- image-to-video --------------------------------------------------------------------------------------
    def image_pipeline(self, image: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """An I2V model's own pipeline, or TI2V-5B's components in `WanImageToVideoPipeline`; the first frame as
        a PIL image: what both the CLIP processor and the VAE preprocessing of the pipeline expect."""
        # (heavy to import: loaded where used)
        from PIL import Image

        pipe = self.pipe if self.image_to_video else self._ti2v_pipeline()
        return pipe, {"image": Image.fromarray(np.ascontiguousarray(image), "RGB")}

    def _ti2v_pipeline(self):
        """Wan 2.2 TI2V-5B in image-to-video mode: `WanImageToVideoPipeline` on the same components (no CLIP
        image encoder: `expand_timesteps` pins the first latent frame to the image's latent instead)."""
        # (heavy to import: loaded where used)
        from diffusers import WanImageToVideoPipeline

        if self._i2v_pipe is None:
            c = self.pipe.components
            self._i2v_pipe = WanImageToVideoPipeline(
                tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"], scheduler=c["scheduler"],
                transformer=c["transformer"], transformer_2=c.get("transformer_2"),
                boundary_ratio=self.pipe.config.get("boundary_ratio"), expand_timesteps=True,
            )  # fmt: skip
        return self._i2v_pipe


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
def build_tiny_wan(
    folder: str | Path,
    seed: int = 0,
    *,
    layers: int = 2,
    heads: int = 2,
    head_dim: int = 12,
    two_experts: bool = False,
    latent_channels: int = 16,
) -> Path:
    """Write a tiny random Wan 2.1-style T2V pipeline to `folder` (diffusers layout, safetensors).
    `two_experts`: Wan 2.2 A14B's layout instead, a high-noise `transformer` and a low-noise `transformer_2`
    switched at `boundary_ratio` 0.875 of the timesteps. `latent_channels`: the VAE's (the bench's real-size
    DiT takes Wan's 16)."""
    # (heavy to import: loaded where used)
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    np.random.seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=latent_channels,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()

    def dit() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=latent_channels,
            out_channels=latent_channels,
            text_dim=32,
            freq_dim=32,
            ffn_dim=32,
            num_layers=layers,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ).eval()

    transformer = dit()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    experts = {"transformer_2": dit(), "boundary_ratio": 0.875} if two_experts else {}
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
        **experts,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_wan22_ti2v(folder: str | Path, seed: int = 0, *, layers: int = 2) -> Path:
    """Write a tiny random Wan 2.2 TI2V-5B-style T2V pipeline: the 48-channel residual VAE with a 2x2 pixel
    patch (spatial stride 16, temporal 4) and `expand_timesteps=True` (one timestep per latent patch).

    Config after diffusers' `tests/pipelines/wan/test_wan_22.py` (Wan225BPipelineFastTests)."""
    # (heavy to import: loaded where used)
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS)
    text_encoder = tiny_umt5(len(tokenizer))
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
    ).eval()  # fmt: skip
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler,
        transformer_2=None, boundary_ratio=None, expand_timesteps=True,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_wan_i2v(
    folder: str | Path, seed: int = 0, *, layers: int = 2, heads: int = 2, head_dim: int = 12
) -> Path:
    """Write a tiny random Wan 2.1 I2V pipeline (`WanImageToVideoPipeline`) to `folder`: the tiny Wan T2V
    parts, plus a tiny `CLIPVisionModel` image encoder and a `CLIPImageProcessor` (32x32), both made in code,
    and a DiT that takes the image condition the way Wan 2.1 I2V does: 36 input channels (16 noisy latent +
    4 first-frame mask + 16 condition latent), `image_dim` = the encoder's width, and `added_kv_proj_dim` so
    each block's cross-attention has the image key/value projections (`attn2.add_k_proj` / `add_v_proj`).

    Sizes after diffusers' `tests/pipelines/wan/test_wan_image_to_video.py`."""
    # (heavy to import: loaded where used)
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )

    # (heavy to import: loaded where used)
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS)
    text_encoder = tiny_umt5(len(tokenizer))
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    image_width = 8  # the CLIP encoder's hidden size: the DiT's image_dim
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=image_width, projection_dim=image_width, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, intermediate_size=16, patch_size=4,
        )
    ).eval()  # fmt: skip
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=36,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_width,
        added_kv_proj_dim=heads * head_dim,
    ).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
        image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# -- ComfyUI's names -------------------------------------------------------------------------------------------
# diffusers Wan module name -> original Wan (ComfyUI) name, inside blocks.N.
_COMFY_WAN = [
    (r"\.attn1\.to_q$", ".self_attn.q"),
    (r"\.attn1\.to_k$", ".self_attn.k"),
    (r"\.attn1\.to_v$", ".self_attn.v"),
    (r"\.attn1\.to_out\.0$", ".self_attn.o"),
    (r"\.attn2\.to_q$", ".cross_attn.q"),
    (r"\.attn2\.to_k$", ".cross_attn.k"),
    (r"\.attn2\.to_v$", ".cross_attn.v"),
    (r"\.attn2\.to_out\.0$", ".cross_attn.o"),
    (r"\.attn2\.add_k_proj$", ".cross_attn.k_img"),
    (r"\.attn2\.add_v_proj$", ".cross_attn.v_img"),
    (r"\.ffn\.net\.0\.proj$", ".ffn.0"),
    (r"\.ffn\.net\.2$", ".ffn.2"),
]


def comfyui_module_name(module: str) -> str:
    """ComfyUI's name (the original Wan layout) of a diffusers Wan module."""
    for pat, rep in _COMFY_WAN:
        if re.search(pat, module):
            return re.sub(pat, rep, module)
    raise SetseqError(
        f"no ComfyUI name is known for module '{module}'", "export with --format diffusers instead"
    )


def wan_cross_attention(transformer: nn.Module) -> CrossAttention:
    """A Wan DiT's cross-attention (the toy model's and SkyReels V2's too): every block's `attn2`, of both
    experts in Wan 2.2 A14B (a step runs one of them: `model.expert_routing=step`). Wan 2.1 I2V's image tokens
    have keys of their own (`add_k_proj`), apart from the text's `norm_k`."""
    layers = tuple(m for name, m in transformer.named_modules() if name.endswith("attn2"))
    return CrossAttention(layers, tuple(transformer.config.patch_size))


def comfyui_slot(module: str) -> tuple[str, int]:
    """(ComfyUI module name, slot) of a diffusers Wan module: ComfyUI fuses none of Wan's linears."""
    return comfyui_module_name(module), 0


# -- bench shapes ------------------------------------------------------------------------------------------------
def wan_shape(heads: int, ffn: int, layers: int, note: str) -> BenchShape:
    """A Wan 2.1 T2V DiT (head dim 128, UMT5-XXL text of 512 x 4096)."""
    config = dict(
        patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
        freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        num_attention_heads=heads, ffn_dim=ffn, num_layers=layers,
    )  # fmt: skip
    return BenchShape("wan", "WanTransformer3DModel", config, 16, 512, 4096, note=note)


FAMILY = Family(
    "wan",
    WanBackbone.load,
    # Wan 2.1 I2V (CLIP image_encoder), Wan 2.2 I2V A14B: generation only
    pipelines=("WanPipeline", "WanImageToVideoPipeline"),
    comfyui=comfyui_slot,
    experts=EXPERTS,
    shapes={
        "wan-1.3b": wan_shape(12, 8960, 30, "Wan 2.1 T2V 1.3B"),
        "wan-14b": wan_shape(
            40, 13824, 40, "Wan 2.1 T2V 14B (one expert of Wan 2.2 A14B has the same shape)"
        ),
    },
    tiny=(
        TinyModel("wan", build_tiny_wan, "WanPipeline", 9, (32, 32), 2 * (4 + 4 + 2)),
        TinyModel("wan22_ti2v", build_tiny_wan22_ti2v, "WanPipeline", 9, (32, 32), 2 * (4 + 4 + 2)),
        # Wan 2.1 I2V: attn2 also has the CLIP image projections; generation starts from an image
        TinyModel("wan_i2v", build_tiny_wan_i2v, "WanImageToVideoPipeline", 9, (32, 32), 2 * (4 + 6 + 2)),
    ),
    backbone=WanBackbone,
)
