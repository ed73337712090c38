"""HunyuanVideo 1.5 text-to-video through diffusers (`HunyuanVideo15Pipeline`, `HunyuanVideo15Transformer3DModel`,
`AutoencoderKLHunyuanVideo15`), e.g. `hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v` (or the 720p and
CFG-distilled T2V checkpoints) in diffusers layout. The image-to-video checkpoints are not supported.

- Objective: rectified flow, the same convention as Wan (velocity noise - x0, timestep sigma * 1000, in the
  DiT's dtype as the pipeline passes it), so the default flow-matching target applies. Training sigmas: u
  uniform, then the scheduler's shift (5 for 480p, 9 for 720p: `scheduler/scheduler_config.json`).
- Guidance: real classifier-free guidance with the negative prompt, held by the pipeline's `guider` (6.0; 1.0
  for the CFG-distilled checkpoints): `guidance_scale` at generation replaces that guider for the call.
- Text: two encoders, both exactly through the pipeline's own `encode_prompt`. Qwen2.5-VL (its hidden states
  two layers from the top, the prompt inside the pipeline's chat template whose first 108 tokens are cropped,
  1000 tokens) and ByT5 on the quoted text of the prompt (the glyphs to render, 256 tokens; all zeros and
  masked when the prompt quotes nothing). `PromptEmbeds` holds both in one tensor so the cache, token masking
  and batching need nothing new: embeds (B, 1000 + 256, D) with D = the wider of the two (Qwen first, ByT5
  after it, each zero-padded in width), mask (B, 1000 + 256). There is no pooled embedding.
- The DiT call: `t2v_transformer_class()` (below) is diffusers' DiT with a text-to-video forward that
  runs on the meta device (memory estimate, FLOP count), which diffusers' does not (it selects each sample's
  valid text tokens by boolean indexing). Text tokens carry no position in this DiT, so their order and any
  masked ones do not change the video tokens' output: it keeps every text token with the mask and drops the
  729 image-embedding tokens that text-to-video masks out entirely, and `forward` cuts the padding beyond the
  batch's longest prompt (exact, and 1000 + 256 + 729 text tokens become a few dozen). The pipeline's own
  calls (with `image_embeds`) run diffusers' forward unchanged; `tests/test_backbones.py` checks both agree.
- Token masking clears a dropped token's mask bit, which the DiT honours (masked out of every attention).
- Latents: the VAE's posterior mean times `scaling_factor` (no shift), as the pipeline divides before decoding;
  spatially tiled (256-pixel tiles) for real checkpoints, as diffusers' example runs the VAE.
  The DiT's input is [latents, condition latents, condition mask] on channels (2C + 1); text-to-video's
  condition is all zeros, as the pipeline makes it.
- Single frames (stage 1): the VAE is causal (one frame encodes to one latent frame), so stage 1 uses that
  latent as is. Shapes: 4k+1 frames, sides multiples of 16.
- LoRA targets: HunyuanVideo 1.5 has dual-stream blocks only (`transformer_blocks.N`, 54 of them): the video
  side of the joint attention (`attn.to_q/k/v/to_out.0`), the text side (`attn.add_q_proj/add_k_proj/
  add_v_proj/to_add_out`) and one FFN per stream (`ff`, `ff_context`), 12 linears a block; in the last block
  only the video tokens go on to the output, so its text query, text attention output and text FFN (which
  would get no gradient) are left out. The token refiner, the ByT5 and image projections and the modulation
  linears are left out too.
- ComfyUI runs HunyuanVideo 1.5 on its HunyuanVideo model (`double_blocks.N.img_attn.qkv`, ...), so
  `setseq export --format comfyui` writes the same fused names as for HunyuanVideo (`setseq.export`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from setseq.backbones.base import BenchShape, Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone
from setseq.backbones.hunyuan import COMFYUI_FUSED, comfyui_slot
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer, tiny_t5
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds


def _t2v_forward(
    self,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor,
    timestep_r: torch.Tensor | None = None,
    encoder_hidden_states_2: torch.Tensor | None = None,
    encoder_attention_mask_2: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    return_dict: bool = True,
):
    """`HunyuanVideo15T2VTransformer.forward`: diffusers' own for the pipeline's call (with `image_embeds`);
    for setseq's (text-to-video, no image embedding) the same computation with no data-dependent shapes
    (`attention_kwargs` unused: setseq's LoRA layers carry their own scales)."""
    # (heavy to import: loaded where used)
    from diffusers import HunyuanVideo15Transformer3DModel
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    if image_embeds is not None or timestep_r is not None:
        return HunyuanVideo15Transformer3DModel.forward(
            self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, timestep_r,
            encoder_hidden_states_2, encoder_attention_mask_2, image_embeds, attention_kwargs, return_dict,
        )  # fmt: skip
    b, _, f, h, w = hidden_states.shape
    p, pt = self.config.patch_size, self.config.patch_size_t
    rope = self.rope(hidden_states)
    temb = self.time_embed(timestep)
    x = self.x_embedder(hidden_states)  # (B, N, D)
    text = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)  # (B, L1, D)
    text = text + self.cond_type_embed(torch.zeros_like(text[..., 0], dtype=torch.long))
    glyph = self.context_embedder_2(encoder_hidden_states_2)  # (B, L2, D)
    glyph = glyph + self.cond_type_embed(torch.ones_like(glyph[..., 0], dtype=torch.long))
    context = torch.cat([glyph, text], dim=1)
    mask = torch.cat([encoder_attention_mask_2, encoder_attention_mask], dim=1).bool()
    context = torch.where(mask[..., None], context, torch.zeros_like(context))  # padding zeroed, as diffusers
    for block in self.transformer_blocks:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            x, context = self._gradient_checkpointing_func(block, x, context, temb, mask, rope)
        else:
            x, context = block(x, context, temb, mask, rope)
    x = self.proj_out(self.norm_out(x, temb))  # (B, N, pt * p * p * C)
    x = x.reshape(b, f // pt, h // p, w // p, -1, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)
    out = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)  # (B, C, f, h, w)
    return (out,) if not return_dict else Transformer2DModelOutput(sample=out)


@functools.cache
def t2v_transformer_class() -> type:
    """diffusers' HunyuanVideo 1.5 DiT with `_t2v_forward`: same weights and module names, only the class
    differs. Made on first use, so that importing this module does not import diffusers."""
    # (heavy to import: loaded where used)
    from diffusers import HunyuanVideo15Transformer3DModel

    return type(
        "HunyuanVideo15T2VTransformer", (HunyuanVideo15Transformer3DModel,), {"forward": _t2v_forward}
    )


def lora_targets(num_layers: int) -> tuple[str, ...]:
    """Every linear of the dual-stream blocks' attention and FFNs, but the last block's text-side query,
    attention output and FFN: only the video tokens go on from the last block, so those get no gradient."""
    last = rf"(?!{num_layers - 1}\.)"  # any block but the last
    return (
        r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_k_proj|add_v_proj)$",
        rf"^transformer_blocks\.{last}\d+\.attn\.(add_q_proj|to_add_out)$",
        r"^transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$",
        rf"^transformer_blocks\.{last}\d+\.ff_context\.net\.(0\.proj|2)$",
    )


def _kept_length(mask: torch.Tensor, least: int) -> int:
    """Columns up to the last one that any sample keeps (at least `least`): what lies beyond is padding. On
    the meta device (memory estimate, FLOP count) nothing is known, so every column is kept."""
    if mask.is_meta:
        return mask.shape[1]
    cols = mask.any(dim=0).nonzero()
    return max(least, int(cols.max()) + 1 if len(cols) else 0)


class HunyuanVideo15Backbone(DiffusersBackbone):
    """HunyuanVideo 1.5 T2V behind the `Backbone` protocol."""

    name, label, pipeline_class = "hunyuan15", "HunyuanVideo 1.5", "HunyuanVideo15Pipeline"
    vae_fp32 = True  # the pipeline casts latents to the VAE's dtype before decoding
    default_steps, default_guidance = 50, 6.0  # `setup` reads the guidance from the checkpoint's guider

    def setup(self, model_id: str) -> dict[str, Any]:
        pipe, tcfg = self.pipe, self.transformer.config
        if tcfg.task_type == "i2v":
            raise SetseqError(
                f"{model_id} is a HunyuanVideo 1.5 image-to-video checkpoint, which setseq does not support",
                "use a text-to-video one (e.g. hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v)",
            )
        self.transformer.__class__ = t2v_transformer_class()  # pipe.transformer is the same object
        # No `tokenizer` for textual inversion (`setseq.train.embeddings` refuses it): two encoders, a chat template.
        self.tokenizer = None
        self.text_length, self.glyph_length = int(pipe.tokenizer_max_length), int(pipe.tokenizer_2_max_length)
        self.scaling_factor = float(self.vae.config.scaling_factor)  # latents = z * scaling_factor, no shift
        self.sigma_shift = float(pipe.scheduler.config.get("shift", 1.0))
        self.default_guidance = float(pipe.guider.guidance_scale)
        ss, st = int(self.vae.spatial_compression_ratio), int(self.vae.temporal_compression_ratio)
        if self.is_tiny():
            height, width, frames = 32, 32, 9
        else:  # the pipeline's defaults: 16:9 at the checkpoint's resolution (480x848, 720x1280), 121 frames
            height, width = pipe.video_processor.calculate_default_height_width(9, 16, tcfg.target_size)
            frames = 121
            self.vae.enable_tiling()  # as diffusers' example: a whole 480x848 clip's activations take tens of GB
        return dict(
            height=height,
            width=width,
            frames=frames,
            frame_multiple=st * int(tcfg.patch_size_t),
            spatial_multiple=ss * int(tcfg.patch_size),
            lora_targets=lora_targets(int(tcfg.num_layers)),
            extra={
                "flow_shift": self.sigma_shift,
                "guidance_scale": self.default_guidance,
                "text_tokens": [self.text_length, self.glyph_length],
            },
        )

    def fingerprint_configs(self) -> list[dict]:
        return super().fingerprint_configs() + [self.pipe.text_encoder_2.config.to_dict()]

    def guidance_kwargs(self, guidance_scale: float) -> dict[str, Any]:
        if self.pipe.guider.guidance_scale != guidance_scale:  # the pipeline's guider holds the scale
            self.pipe.guider = self.pipe.guider.new(guidance_scale=guidance_scale)
        return {}

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        qwen, qmask, glyph, gmask = self.pipe.encode_prompt(
            prompts, device=self.device, dtype=torch.float32, batch_size=len(prompts)
        )  # (B, 1000, Dq), (B, 1000), (B, 256, Dg), (B, 256)
        width = max(qwen.shape[-1], glyph.shape[-1])
        embeds = torch.cat(
            [F.pad(qwen, (0, width - qwen.shape[-1])), F.pad(glyph, (0, width - glyph.shape[-1]))], 1
        )
        return PromptEmbeds(embeds, torch.cat([qmask, gmask], dim=1).bool())

    # -- diffusion -------------------------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        n, tcfg = self.text_length, self.transformer.config
        embeds, mask = prompt.embeds, prompt.mask.to(self.device)
        if embeds.shape[1] != n + self.glyph_length:
            raise SetseqError(
                f"these prompt embeddings hold {embeds.shape[1]} tokens, not HunyuanVideo 1.5's "
                f"{n} + {self.glyph_length}",
                "delete the run's cache/ folder and train again",
            )
        k1, k2 = _kept_length(mask[:, :n], 1), _kept_length(mask[:, n:], 0)  # the padding cut off
        embeds = embeds.to(self.device, self.dtype)
        x = noisy.to(self.device, self.dtype)
        b, _, f, h, w = x.shape
        # (B, 2C + 1, f, h, w): text-to-video's condition latents and condition mask are zeros
        x = torch.cat([x, torch.zeros_like(x), x.new_zeros(b, 1, f, h, w)], dim=1)
        out = self.transformer(
            hidden_states=x,
            timestep=(sigmas.to(self.device).float() * 1000.0).to(self.dtype),
            encoder_hidden_states=embeds[:, :k1, : tcfg.text_embed_dim],
            encoder_attention_mask=mask[:, :k1],
            encoder_hidden_states_2=embeds[:, n : n + k2, : tcfg.text_embed_2_dim],
            encoder_attention_mask_2=mask[:, n : n + k2],
            return_dict=False,
        )[0]
        return out.float()


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
# HunyuanVideo15Pipeline crops this many tokens of its chat template (`prompt_template_encode_start_idx`).
HUNYUAN15_TEMPLATE_TOKENS = 108


def build_tiny_hunyuan15(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 4
) -> Path:
    """Write a tiny random HunyuanVideo 1.5 T2V pipeline (`HunyuanVideo15Pipeline`): a tiny
    `Qwen2_5_VLTextModel` with a word-level tokenizer built in code, a tiny ByT5 (`T5EncoderModel`, its
    `ByT5Tokenizer` needs no files), a tiny `AutoencoderKLHunyuanVideo15` with the real strides (16 spatial,
    4 temporal), a text-to-video `HunyuanVideo15Transformer3DModel` (2 x latent + 1 input channels), CFG 6.

    Sizes after diffusers' `tests/pipelines/hunyuan_video1_5/test_hunyuan_1_5.py`. The word-level
    tokenizer's chat template puts the system message in exactly `HUNYUAN15_TEMPLATE_TOKENS` tokens, the
    prefix the pipeline crops (Qwen2.5's real template is that long too), then the prompt and an end token.
    The last VAE level is 64 wide so that its channel grouping (width / 2 x latent channels) is whole for
    the real 32 latent channels too (`setseq bench --shape hunyuan-1.5` builds its VAE here)."""
    # (heavy to import: loaded where used)
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )

    # (heavy to import: loaded where used)
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=2048)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        f"{{{{ 'the ' * {HUNYUAN15_TEMPLATE_TOKENS} }}}}"
        "{% else %}{{ m['content'] }} </s>{% endif %}{% endfor %}"
    )
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=3, bos_token_id=1,
            num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, rope_theta=1e6,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        )
    ).eval()  # fmt: skip
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = tiny_t5(len(tokenizer_2), d_model=8)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * latent_channels + 1, out_channels=latent_channels, num_attention_heads=2,
        attention_head_dim=8, num_layers=layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
        patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(2, 2, 4),
        target_size=32, task_type="t2v",
    ).eval()  # fmt: skip
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 8, 8, 64),
        layers_per_block=1, spatial_compression_ratio=16, temporal_compression_ratio=4,
        downsample_match_channel=False, upsample_match_channel=False,
    ).eval()  # fmt: skip
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# The config of hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v (diffusers'
# scripts/convert_hunyuan_video1_5_to_diffusers.py, TRANSFORMER_CONFIGS["480p_t2v"]; the 720p one differs only
# in target_size): 8.3B parameters (model card). Text: Qwen2.5-VL's 1000 tokens (3584 wide) and ByT5's 256
# (1472 wide) side by side, every token valid: the longest prompt, quoting 256 bytes of text to render.
FAMILY = Family(
    "hunyuan15",
    HunyuanVideo15Backbone.load,
    fps=24.0,
    # text-to-video only (HunyuanVideo15ImageToVideoPipeline: refused)
    pipelines=("HunyuanVideo15Pipeline",),
    # ComfyUI runs HunyuanVideo 1.5 on its HunyuanVideo model (comfy/ldm/hunyuan_video/model.py: the same flux
    # DoubleStreamBlock, no single blocks; diffusion-pipe trains its HunyuanVideo 1.5 LoRAs on it): same names.
    comfyui=comfyui_slot,
    comfyui_fused=COMFYUI_FUSED,
    shapes={
        "hunyuan-1.5": BenchShape(
            "hunyuan15",
            "HunyuanVideo15Transformer3DModel",
            dict(
                in_channels=65,
                out_channels=32,
                num_attention_heads=16,
                attention_head_dim=128,
                num_layers=54,
                num_refiner_layers=2,
                mlp_ratio=4.0,
                patch_size=1,
                patch_size_t=1,
                qk_norm="rms_norm",
                text_embed_dim=3584,
                text_embed_2_dim=1472,
                image_embed_dim=1152,
                rope_theta=256.0,
                rope_axes_dim=(16, 56, 56),
                target_size=640,
                task_type="t2v",
            ),  # fmt: skip
            32,
            1000 + 256,
            3584,
            note="HunyuanVideo 1.5 (8.3B, 480p T2V)",
        )
    },
    # diffusers gives HunyuanVideo15Pipeline no LoRA loader yet (diffusers#14420)
    tiny=(
        TinyModel("hunyuan15", build_tiny_hunyuan15, "HunyuanVideo15Pipeline", 9, (32, 48), 12 + 8, False),
    ),
    backbone=HunyuanVideo15Backbone,
)
