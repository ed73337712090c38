"""HunyuanVideo text-to-video through diffusers (`HunyuanVideoPipeline`, `HunyuanVideoTransformer3DModel`,
`AutoencoderKLHunyuanVideo`), e.g. `hunyuanvideo-community/HunyuanVideo` in diffusers layout.

- Objective: rectified flow, the same convention as Wan (velocity noise - x0, timestep sigma * 1000), so the
  default flow-matching target applies. Training sigmas: u uniform, then the scheduler's shift (7.0).
- Guidance: HunyuanVideo is guidance-distilled: the DiT takes the guidance scale as an input (x1000).
  Training feeds guidance 1.0, as finetrainers' HunyuanVideo LoRA training does; generation feeds
  `guidance_scale` (default 6.0, the pipeline's). So for this backbone `guidance_scale` is the *embedded*
  guidance, and true classifier-free guidance stays off (the pipeline's default `true_cfg_scale=1`):
  the negative prompt is not used.
- Text: two encoders. A Llama (its hidden states two layers from the top, the prompt wrapped in
  HunyuanVideo's chat template whose first 95 tokens are cropped, 256 tokens) gives `PromptEmbeds.embeds`
  and `mask`; CLIP's pooled output gives `PromptEmbeds.pooled`. Both exactly through the pipeline's own
  `_get_llama_prompt_embeds` / `_get_clip_prompt_embeds`. A tokenizer without Llama-3's chat tokens (tiny test
  models) gets the plain "{}" template with no crop, as diffusers' own tests use.
- Token masking: the DiT reads `encoder_attention_mask` as a *length* (it keeps the first `mask.sum()` text
  tokens), so `predict` moves the kept tokens to the front (stable order) before the call. A dropped token is
  then removed exactly, not just zeroed (the text tokens carry no position of their own in the DiT). Without
  masking the mask is already a prefix and nothing moves. The pooled CLIP vector is kept.
- Latents: the VAE's posterior mean times `scaling_factor` (no shift), as the pipeline divides before decoding.
- Single frames (stage 1): the VAE is causal: one frame encodes to one latent frame, and HunyuanVideo was
  trained on images as 1-frame videos, so stage 1 uses that latent as is.
- LoRA targets: HunyuanVideo has no cross-attention. Dual-stream blocks (`transformer_blocks.N`) run a joint
  attention with separate projections per stream: the video side (`attn.to_q/k/v/to_out.0`), the text side
  (`attn.add_q_proj/add_k_proj/add_v_proj/to_add_out`, the joint-attention text projections that play
  cross-attention's part) and one FFN per stream (`ff`, `ff_context`). Single-stream blocks
  (`single_transformer_blocks.N`) share `attn.to_q/k/v` for both streams and fuse the attention output with
  the FFN (`proj_mlp` in, `proj_out` out). All of these carry LoRA. The text token refiner
  (`context_embedder.*`) and the modulation linears (`norm*.linear`) are left out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import BenchShape, Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds

HUNYUAN_LORA_TARGETS = (
    r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    r"^transformer_blocks\.\d+\.(ff|ff_context)\.net\.(0\.proj|2)$",
    r"^single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)$",
    r"^single_transformer_blocks\.\d+\.(proj_mlp|proj_out)$",
)
CLIP_LENGTH = 77
TRAIN_GUIDANCE = 1.0  # embedded guidance during training (finetrainers' HunyuanVideo default)
PLAIN_TEMPLATE = {"template": "{}", "crop_start": 0}


def _prompt_template(tokenizer) -> dict:
    """HunyuanVideo's chat template if the tokenizer has Llama-3's header tokens, else the plain one."""
    # (heavy to import: loaded where used)
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    tid = tokenizer.convert_tokens_to_ids("<|start_header_id|>")
    if tid is None or tid == tokenizer.unk_token_id:
        return PLAIN_TEMPLATE
    return DEFAULT_PROMPT_TEMPLATE


class HunyuanVideoBackbone(DiffusersBackbone):
    """HunyuanVideo T2V behind the `Backbone` protocol."""

    name, label, pipeline_class = "hunyuan", "HunyuanVideo", "HunyuanVideoPipeline"
    vae_fp32 = True  # the pipeline casts latents to the VAE's dtype before decoding
    # `guidance_scale` is the embedded (distilled) guidance; true CFG stays off (the pipeline's default), so
    # the negative prompt is not used.
    default_steps, default_guidance, negative_prompt = 50, 6.0, False
    text_length = 256  # HunyuanVideoPipeline's default Llama text length (after the template crop)

    def setup(self, model_id: str) -> dict[str, Any]:
        # No `tokenizer` for textual inversion (`setseq.train.embeddings` refuses it): the prompt goes through
        # two encoders, Llama and CLIP, and the pipeline's own helpers tokenise for both.
        self.tokenizer = None
        vcfg, tcfg = self.vae.config, self.transformer.config
        self.scaling_factor = float(vcfg.scaling_factor)  # latents = z * scaling_factor, no shift
        self.template = _prompt_template(self.pipe.tokenizer)
        self.sigma_shift = float(self.pipe.scheduler.config.get("shift", 7.0))
        ss, st = int(vcfg.spatial_compression_ratio), int(vcfg.temporal_compression_ratio)
        small = self.is_tiny(tcfg.num_layers + tcfg.num_single_layers)
        return dict(
            # The pipeline's defaults (720x1280, 129 frames); tiny test models default to a tiny size.
            height=32 if small else 720,
            width=32 if small else 1280,
            frames=9 if small else 129,
            frame_multiple=st * int(tcfg.patch_size_t),
            spatial_multiple=ss * int(tcfg.patch_size),
            lora_targets=HUNYUAN_LORA_TARGETS,
            extra={
                "flow_shift": self.sigma_shift,
                "train_guidance": TRAIN_GUIDANCE,
                "prompt_template": "hunyuan" if self.template is not PLAIN_TEMPLATE else "plain",
            },
        )

    def fingerprint_configs(self) -> list[dict]:
        return super().fingerprint_configs() + [self.pipe.text_encoder_2.config.to_dict()]

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"prompt_template": self.template}

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        embeds, mask = self.pipe._get_llama_prompt_embeds(
            prompts, self.template, device=self.device, max_sequence_length=self.text_length
        )  # (B, L, D), (B, L)
        pooled = self.pipe._get_clip_prompt_embeds(
            prompts, device=self.device, max_sequence_length=CLIP_LENGTH
        )  # (B, P)
        return PromptEmbeds(embeds.float(), mask.bool(), pooled.float())

    # -- diffusion -------------------------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        if prompt.pooled is None:
            raise SetseqError(
                "HunyuanVideo needs the pooled CLIP text embedding, which these prompt embeddings lack",
                "delete the run's cache/ folder and train again",
            )
        mask = prompt.mask.to(self.device)
        # Kept tokens first (stable): the DiT keeps the first mask.sum() text tokens.
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # (B, L)
        embeds = torch.gather(
            prompt.embeds.to(self.device), 1, order[..., None].expand(-1, -1, prompt.embeds.shape[-1])
        )
        b = noisy.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), TRAIN_GUIDANCE * 1000.0, device=self.device, dtype=self.dtype)
        out = self.transformer(
            hidden_states=noisy.to(self.device, self.dtype),
            timestep=sigmas.to(self.device).float() * 1000.0,
            encoder_hidden_states=embeds.to(self.dtype),
            encoder_attention_mask=torch.gather(mask, 1, order),
            pooled_projections=prompt.pooled.to(self.device, self.dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return out.float()


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
def tiny_hunyuan_vae(latent_channels: int = 4):
    """A tiny random `AutoencoderKLHunyuanVideo` with the real strides (8 spatial, 4 temporal) and scaling factor:
    HunyuanVideo's VAE, which Kandinsky 5 uses too."""
    # (heavy to import: loaded where used)
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).eval()  # fmt: skip


def build_tiny_hunyuan(
    folder: str | Path, seed: int = 0, *, layers: int = 1, latent_channels: int = 4
) -> Path:
    """Write a tiny random HunyuanVideo T2V pipeline: a tiny `LlamaModel` and `CLIPTextModel` with word-level
    tokenizers built in code, a tiny `AutoencoderKLHunyuanVideo` (stride 8 spatial, 4 temporal), a
    guidance-embedding `HunyuanVideoTransformer3DModel` with dual- and single-stream blocks.

    Sizes after diffusers' `tests/pipelines/hunyuan_video/test_hunyuan_video.py`. The word-level Llama
    tokenizer has none of Llama-3's chat tokens, so `setseq.backbones.hunyuan` uses the plain "{}" prompt
    template for it (crop 0), as diffusers' own test does."""
    # (heavy to import: loaded where used)
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    # (heavy to import: loaded where used)
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=256)
    tokenizer_2 = build_word_tokenizer(TINY_WORDS, max_length=77)
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_attention_heads=4,
            num_key_value_heads=4, num_hidden_layers=2, pad_token_id=0, eos_token_id=1, bos_token_id=1,
            max_position_embeddings=512, hidden_act="silu",
        )
    ).eval()  # fmt: skip
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2), hidden_size=8, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, pad_token_id=0, eos_token_id=1, bos_token_id=1,
            projection_dim=8, hidden_act="gelu",
        )
    ).eval()  # fmt: skip
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=10,
        num_layers=layers,
        num_single_layers=layers, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()  # fmt: skip
    vae = tiny_hunyuan_vae(latent_channels)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# -- ComfyUI's names -------------------------------------------------------------------------------------------
# ComfyUI's HunyuanVideo (comfy/ldm/hunyuan_video/model.py, blocks from comfy/ldm/flux/layers.py) fuses
# q, k, v into one `qkv` linear (rows [q; k; v]), and a single block's q, k, v and MLP input into `linear1`
# (rows [q; k; v; mlp]). diffusers module (inside the block) -> (ComfyUI module, its slot in the fused rows).
_COMFY_HUNYUAN_DOUBLE = {
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", 0),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_add_out": ("txt_attn.proj", 0),
    "ff.net.0.proj": ("img_mlp.0", 0),
    "ff.net.2": ("img_mlp.2", 0),
    "ff_context.net.0.proj": ("txt_mlp.0", 0),
    "ff_context.net.2": ("txt_mlp.2", 0),
}
_COMFY_HUNYUAN_SINGLE = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", 0),
}
COMFYUI_FUSED = {"img_attn.qkv": 3, "txt_attn.qkv": 3, "linear1": 4}


def comfyui_slot(module: str) -> tuple[str, int]:
    """(ComfyUI module name, slot in its fused weight) of a diffusers HunyuanVideo module."""
    m = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$", module)
    if m:
        double = m.group(1) == "transformer_blocks"
        table = _COMFY_HUNYUAN_DOUBLE if double else _COMFY_HUNYUAN_SINGLE
        if m.group(3) in table:
            name, slot = table[m.group(3)]
            return f"{'double_blocks' if double else 'single_blocks'}.{m.group(2)}.{name}", slot
    raise SetseqError(
        f"no ComfyUI name is known for module '{module}' of a HunyuanVideo model",
        "export with --format diffusers instead",
    )


FAMILY = Family(
    "hunyuan",
    HunyuanVideoBackbone.load,
    fps=15.0,
    pipelines=("HunyuanVideoPipeline",),
    comfyui=comfyui_slot,
    comfyui_fused=COMFYUI_FUSED,
    shapes={
        "hunyuan": BenchShape(
            "hunyuan",
            "HunyuanVideoTransformer3DModel",
            dict(
                in_channels=16,
                out_channels=16,
                num_attention_heads=24,
                attention_head_dim=128,
                num_layers=20,
                num_single_layers=40,
                num_refiner_layers=2,
                mlp_ratio=4.0,
                patch_size=2,
                patch_size_t=1,
                guidance_embeds=True,
                text_embed_dim=4096,
                pooled_projection_dim=768,
                rope_axes_dim=(16, 56, 56),
            ),  # fmt: skip
            16,
            256,
            4096,
            pooled_dim=768,
            layer_keys=("num_layers", "num_single_layers"),
            note="HunyuanVideo (13B)",
        )
    },
    tiny=(TinyModel("hunyuan", build_tiny_hunyuan, "HunyuanVideoPipeline", 9, (32, 32), 12 + 5),),
    backbone=HunyuanVideoBackbone,
)
