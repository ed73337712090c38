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

import hashlib
import json

import torch

from setseq.backbones.base import BackboneInfo, PromptEmbeds, load_diffusers_pipeline, register_backbone
from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm

HUNYUAN_LORA_TARGETS = (
    r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)$",
    r"^transformer_blocks\.\d+\.(ff|ff_context)\.net\.(0\.proj|2)$",
    r"^single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)$",
    r"^single_transformer_blocks\.\d+\.(proj_mlp|proj_out)$",
)
MAX_SEQUENCE_LENGTH = 256  # HunyuanVideoPipeline's default Llama text length (after the template crop)
CLIP_LENGTH = 77
TRAIN_GUIDANCE = 1.0  # embedded guidance during training (finetrainers' HunyuanVideo default)
PLAIN_TEMPLATE = {"template": "{}", "crop_start": 0}


# Copied from setseq.backbones.wan._fingerprint
def _fingerprint(configs: list[dict]) -> str:
    """Architecture identity: a hash of the component configs (LoRA compatibility, part of cache keys)."""
    return hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Copied from setseq.backbones.wan._plain_config
def _plain_config(cfg) -> dict:
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def _prompt_template(tokenizer) -> dict:
    """HunyuanVideo's chat template if the tokenizer has Llama-3's header tokens, else the plain one."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    tid = tokenizer.convert_tokens_to_ids("<|start_header_id|>")
    if tid is None or tid == tokenizer.unk_token_id:
        return PLAIN_TEMPLATE
    return DEFAULT_PROMPT_TEMPLATE


class HunyuanVideoBackbone:
    """HunyuanVideo T2V behind the `Backbone` protocol."""

    def __init__(self, pipe, model_id: str, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.device = device
        self.dtype = dtype
        vcfg, tcfg = self.vae.config, self.transformer.config
        self.scaling_factor = float(vcfg.scaling_factor)
        self.template = _prompt_template(pipe.tokenizer)
        self.flow_shift = float(pipe.scheduler.config.get("shift", 7.0))
        ss, st = int(vcfg.spatial_compression_ratio), int(vcfg.temporal_compression_ratio)
        small = (
            tcfg.num_layers + tcfg.num_single_layers
        ) * tcfg.num_attention_heads * tcfg.attention_head_dim < 4096 * 8
        self.info = BackboneInfo(
            name="hunyuan",
            model_id=model_id,
            fingerprint=_fingerprint(
                [
                    _plain_config(tcfg),
                    _plain_config(vcfg),
                    self.text_encoder.config.to_dict(),
                    pipe.text_encoder_2.config.to_dict(),
                ]
            ),
            # The pipeline's defaults (720x1280, 129 frames); tiny test models default to a tiny size.
            height=32 if small else 720,
            width=32 if small else 1280,
            frames=9 if small else 129,
            frame_multiple=st * int(tcfg.patch_size_t),
            spatial_multiple=ss * int(tcfg.patch_size),
            supports_self_conditioning=False,
            lora_targets=HUNYUAN_LORA_TARGETS,
            extra={
                "flow_shift": self.flow_shift,
                "train_guidance": TRAIN_GUIDANCE,
                "prompt_template": "hunyuan" if self.template is not PLAIN_TEMPLATE else "plain",
            },
        )

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        embeds, mask = self.pipe._get_llama_prompt_embeds(
            prompts, self.template, device=self.device, max_sequence_length=MAX_SEQUENCE_LENGTH
        )  # (B, L, D), (B, L)
        pooled = self.pipe._get_clip_prompt_embeds(
            prompts, device=self.device, max_sequence_length=CLIP_LENGTH
        )  # (B, P)
        return PromptEmbeds(embeds.float(), mask.bool(), pooled.float())

    # -- video <-> latents -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        x = video.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W) -> (B, 3, F, H, W)
        z = self.vae.encode(x).latent_dist.mode().float()  # (B, C, f, h, w); the mean: deterministic caches
        return z * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() / self.scaling_factor
        x = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]  # (B, 3, F, H, W)
        return x.float().clamp(-1, 1).permute(0, 2, 1, 3, 4)

    # -- diffusion -------------------------------------------------------------------------------------------
    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return fm.sample_sigmas(
            batch, shift=self.flow_shift, weighting="uniform", generator=generator, device=self.device
        )

    def predict(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        self_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self_cond is not None:
            raise SetseqError(
                "HunyuanVideo has no self-conditioning input",
                "set regularizers.self_conditioning=0 for this backbone",
            )
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
        """Text-to-video; `guidance_scale` is HunyuanVideo's embedded (distilled) guidance, the negative prompt
        is not used (true CFG off, the pipeline's default)."""
        self.pipe.set_progress_bar_config(disable=not progress)
        out = self.pipe(
            prompt=prompt,
            height=height or self.info.height,
            width=width or self.info.width,
            num_frames=frames or self.info.frames,
            num_inference_steps=steps or 50,
            guidance_scale=6.0 if guidance_scale is None else guidance_scale,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="pt",
            prompt_template=self.template,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
        ).frames  # (B, F, 3, H, W) in [0, 1]
        return (out[0].float().cpu() * 2.0 - 1.0).clamp(-1, 1)


@register_backbone("hunyuan")
def load_hunyuan(model_id: str, device: torch.device, dtype: torch.dtype) -> HunyuanVideoBackbone:
    """Load a diffusers-format HunyuanVideo T2V checkpoint (local folder or hub id). Only safetensors are read."""
    from diffusers import HunyuanVideoPipeline

    # The VAE stays fp32 in bf16 runs: the pipeline casts latents to the VAE's dtype before decoding.
    pipe = load_diffusers_pipeline(
        HunyuanVideoPipeline, model_id, device, dtype, "HunyuanVideo", vae_fp32=True
    )
    return HunyuanVideoBackbone(pipe, str(model_id), device, dtype)
