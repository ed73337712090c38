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

from typing import Any

import torch

from setseq.backbones.base import register_backbone
from setseq.backbones.diffusers_backbone import DiffusersBackbone
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


load_hunyuan = register_backbone("hunyuan")(HunyuanVideoBackbone.load)
