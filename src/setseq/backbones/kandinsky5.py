"""Kandinsky 5 text-to-video through diffusers (`Kandinsky5T2VPipeline`, `Kandinsky5Transformer3DModel`,
`AutoencoderKLHunyuanVideo`), e.g. `kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers` (2B) or the Pro
checkpoints (19B) in diffusers layout. Image-to-video (`Kandinsky5I2VPipeline`) is refused: it replaces the
first latent frame of the noisy input with the image's latent and marks it in a mask channel, which is not the
concatenated condition setseq's `ImageCondition` carries.

- Objective: rectified flow, the same convention as Wan (velocity noise - x0, timestep sigma * 1000 in the DiT's
  dtype, as the pipeline passes it). Training sigmas: u uniform, then the scheduler's shift
  (`scheduler/scheduler_config.json`).
- DiT call, as `Kandinsky5T2VPipeline.__call__` makes it: latents channels-last (B, f, h, w, C); with
  `visual_cond` (every released T2V config) 2C + 1 input channels, the latents then a condition latent and a
  condition mask, both zeros for text-to-video; RoPE positions `arange` over latent frames and patches and over
  the text tokens; the pipeline's RoPE `scale_factor` for the pixel size (`_get_scale_factor`); no sparse
  attention parameters.
- NABLA checkpoints (`attention_type: nabla`: the 10 s Lite and the Pro ones): setseq trains and samples them
  with full attention (the backbone's pipeline gets a `get_sparse_params` that answers None). NABLA is a
  block-sparse approximation of that attention (per block of 64 queries, the key blocks that hold the share
  `attention_P` of its block-pooled attention, plus a local window); diffusers runs it through flex attention,
  which has no backward on the CPU and needs `torch.compile` to fit a real clip on a GPU, neither of which
  setseq's training does. The LoRA loads into diffusers' pipeline unchanged, which then samples with NABLA
  (set up as diffusers' docs say: `pipe.transformer.set_attention_backend("flex")`, and compiled): how well a
  LoRA trained under full attention carries over there was not measured, nor was either run at real size.
- Text: Qwen2.5-VL's last hidden states after the pipeline's system template (its first 128 tokens cropped)
  and CLIP's pooled output (`PromptEmbeds.pooled`), both through the pipeline's own `encode_prompt`, one prompt
  at a time: the DiT takes **no text mask**, so the pipeline's padding of a batch to its longest prompt would
  leak into the video; alone, a prompt has no padding, as at generation. `PromptEmbeds` holds each prompt's
  tokens first, zero rows after them up to `text_length` (the pipeline's max_sequence_length, 512), and the
  mask marks them. `forward` hands the DiT each sample's kept tokens only (one DiT call per distinct length in
  the batch): padding never reaches it, and a token that token masking drops is removed exactly, not zeroed
  (text RoPE positions stay contiguous). Textual inversion is refused (no `tokenizer`): the prompt goes through
  a template and two encoders.
- Latents: the VAE's posterior mean times `scaling_factor` (no shift), as the pipeline divides before decoding;
  the VAE is HunyuanVideo's (8x space, 4x time, causal: one frame encodes to one latent frame, so stage 1
  uses that latent as is), tiled for real checkpoints as a 121-frame decode needs it. Clips of 4k+1 frames,
  sides multiples of 16 (diffusers' NABLA sampling also needs multiples of 128: 8x8 blocks of 2x2 patches).
- LoRA targets: the visual blocks' self-attention and cross-attention (`to_query`, `to_key`, `to_value`,
  `out_layer`) and FFN (`feed_forward.in_layer` / `out_layer`): 10 linears a block. Not the text blocks (the
  text stream), the modulation linears (kept in fp32 by diffusers), nor the embeddings and output layer.
- Tiny models: `Kandinsky5Modulation` zero-initialises its output layer, so a randomly initialised DiT is the
  identity in every block (prompt, timestep and LoRA change nothing); `build_tiny_kandinsky5` re-draws them.
- ComfyUI's native Kandinsky 5 model (comfy/ldm/kandinsky5/model.py) uses diffusers' module names, so the
  ComfyUI export is the diffusers names under `diffusion_model.` (ComfyUI's loader also accepts them under
  `transformer.`, so the diffusers export loads there too). ComfyUI was not run to check it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from setseq.backbones.base import BenchShape, Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone, index_class_name
from setseq.backbones.hunyuan import tiny_hunyuan_vae
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds

T2V_PIPELINE = "Kandinsky5T2VPipeline"
# Kandinsky 5 pipelines setseq does not train: image-to-video, and the image models
OTHER_PIPELINES = ("Kandinsky5I2VPipeline", "Kandinsky5T2IPipeline", "Kandinsky5I2IPipeline")
TEXT_LENGTH = 512  # Kandinsky5T2VPipeline's default max_sequence_length (Qwen tokens after the template crop)
LORA_TARGETS = (
    r"^visual_transformer_blocks\.\d+\.(self_attention|cross_attention)\.(to_query|to_key|to_value|out_layer)$",
    r"^visual_transformer_blocks\.\d+\.feed_forward\.(in_layer|out_layer)$",
)


def check_pipeline(model_id: str, cls: str | None) -> None:
    """Refuse, in one line naming what is supported, a checkpoint whose pipeline is not Kandinsky 5 T2V."""
    if cls is None or cls == T2V_PIPELINE:
        return
    if cls in OTHER_PIPELINES:
        kind = "image-to-video" if cls == "Kandinsky5I2VPipeline" else "image"
        raise SetseqError(
            f"{model_id} is a Kandinsky 5 {kind} checkpoint ({cls}); setseq trains Kandinsky 5 text-to-video "
            f"only ({T2V_PIPELINE})",
            "use a text-to-video checkpoint, e.g. kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers",
        )
    raise SetseqError(
        f"{model_id} holds a {cls[:80]!r} pipeline, not a Kandinsky 5 text-to-video one ({T2V_PIPELINE})",
        "pass a Kandinsky 5 T2V checkpoint, or drop --backbone so the family comes from model_index.json",
    )


def _no_sparse_params(sample: torch.Tensor, device: torch.device) -> None:
    """`Kandinsky5T2VPipeline.get_sparse_params` for full attention (a NABLA checkpoint in setseq)."""
    return None


def _kept(mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Groups of samples with as many kept tokens: (sample indices, their kept tokens' columns (n, k), in
    order). A sample that keeps none keeps its first column (a zero row): the DiT needs one text token. On the
    meta device (memory estimate, FLOP count) nothing is known: every column of every sample, one group."""
    b, length = mask.shape
    if mask.is_meta:
        return [(torch.arange(b), torch.arange(length).expand(b, -1))]
    counts = mask.sum(dim=1).clamp(min=1)
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # kept columns first
    groups = []
    for k in counts.unique().tolist():
        idx = (counts == k).nonzero().squeeze(1)
        groups.append((idx, order[idx, :k]))
    return groups


class Kandinsky5Backbone(DiffusersBackbone):
    """Kandinsky 5 T2V behind the `Backbone` protocol."""

    name, label, pipeline_class = "kandinsky5", "Kandinsky 5", T2V_PIPELINE
    vae_fp32 = True  # the pipeline casts latents to the VAE's dtype before decoding
    default_steps, default_guidance = 50, 5.0  # Kandinsky5T2VPipeline's defaults
    text_length = TEXT_LENGTH

    @classmethod
    def pipeline_for(cls, model_id: str) -> type:
        check_pipeline(model_id, index_class_name(model_id))
        return super().pipeline_for(model_id)

    def setup(self, model_id: str) -> dict[str, Any]:
        tcfg, vcfg = self.transformer.config, self.vae.config
        # No `tokenizer` for textual inversion (`setseq.train.embeddings` refuses it): the prompt goes through
        # the pipeline's template and two encoders.
        self.tokenizer = None
        self.scaling_factor = float(vcfg.scaling_factor)  # latents = z * scaling_factor, no shift
        self.sigma_shift = float(self.pipe.scheduler.config.get("shift", 1.0))
        self.vae_stride = int(vcfg.spatial_compression_ratio)
        pt, ph, _ = (int(p) for p in tcfg.patch_size)
        if tcfg.attention_type == "nabla":
            # Full attention in setseq's training and generation (see the module's docstring): the pipeline
            # then passes the DiT no sparse parameters.
            self.pipe.get_sparse_params = _no_sparse_params
        if self.is_tiny():
            height, width, frames = 32, 32, 9
        else:  # the pipeline's defaults
            height, width, frames = 512, 768, 121
            self.vae.enable_tiling()  # a whole 121-frame clip's decoder activations take tens of GB
        return dict(
            height=height,
            width=width,
            frames=frames,
            frame_multiple=int(vcfg.temporal_compression_ratio) * pt,
            spatial_multiple=self.vae_stride * ph,
            lora_targets=LORA_TARGETS,
            extra={
                "flow_shift": self.sigma_shift,
                "guidance_scale": self.default_guidance,
                "attention": str(tcfg.attention_type),
                "text_tokens": self.text_length,
            },
        )

    def is_tiny(self, layers: int | None = None) -> bool:
        c = self.transformer.config
        return (c.num_visual_blocks if layers is None else layers) * c.model_dim < 4096 * 8

    def fingerprint_configs(self) -> list[dict]:
        return super().fingerprint_configs() + [self.pipe.text_encoder_2.config.to_dict()]

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        rows, pooled = [], []
        for p in prompts:  # one at a time: no padding (the DiT has no text mask)
            qwen, clip, _ = self.pipe.encode_prompt(
                p, max_sequence_length=self.text_length, device=self.device, dtype=torch.float32
            )  # (1, n, D), (1, P)
            rows.append(qwen[0])
            pooled.append(clip[0])
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        embeds = torch.stack([F.pad(r, (0, 0, 0, self.text_length - len(r))) for r in rows])
        mask = torch.arange(self.text_length, device=self.device)[None] < lengths[:, None]
        return PromptEmbeds(embeds, mask, torch.stack(pooled))

    # -- diffusion -------------------------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        if prompt.pooled is None:
            raise SetseqError(
                "Kandinsky 5 needs the pooled CLIP text embedding, which these prompt embeddings lack",
                "delete the run's cache/ folder and train again",
            )
        x = noisy.to(self.device, self.dtype).permute(0, 2, 3, 4, 1).contiguous()  # (B, f, h, w, C)
        if self.transformer.config.visual_cond:  # text-to-video's condition latent and mask: zeros
            x = torch.cat([x, torch.zeros_like(x), x.new_zeros(*x.shape[:-1], 1)], dim=-1)
        t = (sigmas.to(self.device).float() * 1000.0).to(self.dtype)
        embeds, pooled = prompt.embeds.to(self.device, self.dtype), prompt.pooled.to(self.device, self.dtype)
        groups = _kept(prompt.mask.to(self.device))
        if len(groups) == 1:  # every sample keeps as many tokens (one prompt repeated, the usual batch)
            cols = groups[0][1].to(self.device)
            text = torch.gather(embeds, 1, cols[..., None].expand(-1, -1, embeds.shape[-1]))
            return self._dit(x, text, pooled, t).permute(0, 4, 1, 2, 3).float()  # (B, C, f, h, w)
        outs, order = [], []
        for idx, cols in groups:
            idx, cols = idx.to(self.device), cols.to(self.device)
            text = torch.gather(embeds[idx], 1, cols[..., None].expand(-1, -1, embeds.shape[-1]))
            outs.append(self._dit(x[idx], text, pooled[idx], t[idx]))
            order.append(idx)
        out = torch.cat(outs)[torch.argsort(torch.cat(order))]  # back to the batch's order
        return out.permute(0, 4, 1, 2, 3).float()  # (B, C, f, h, w)

    def _dit(
        self, x: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One DiT call as the pipeline makes it: x (B, f, h, w, C_in), text (B, L, D) -> (B, f, h, w, C)."""
        _, f, h, w, _ = x.shape
        _, ph, pw = self.transformer.config.patch_size
        return self.transformer(
            hidden_states=x,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=t,
            visual_rope_pos=[
                torch.arange(f, device=self.device),
                torch.arange(h // ph, device=self.device),
                torch.arange(w // pw, device=self.device),
            ],
            text_rope_pos=torch.arange(text.shape[1], device=self.device),
            scale_factor=self.pipe._get_scale_factor(h * self.vae_stride, w * self.vae_stride),
            sparse_params=None,  # full attention, NABLA checkpoints too
            return_dict=True,  # (with False diffusers returns the bare tensor, not a tuple)
        ).sample


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
def redraw_modulation(transformer: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every `Kandinsky5Modulation` output layer random weights: diffusers initialises them to zero, which
    makes every block the identity (text, timestep, LoRA and gradients do nothing) in a model not loaded from
    trained weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in transformer.named_modules():
            if name.endswith("modulation.out_layer"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * std)
    return transformer


def build_tiny_kandinsky5(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 4
) -> Path:
    """Write a tiny random Kandinsky 5 T2V pipeline (`Kandinsky5T2VPipeline`): a tiny
    `Qwen2_5_VLForConditionalGeneration` and `CLIPTextModel` with word-level tokenizers built in code (the
    pipeline calls its tokenizer as a processor, `tokenizer(text=..., images=None, videos=None)`, which a
    tokenizer accepts), a tiny `AutoencoderKLHunyuanVideo` (the real strides: 8 spatial, 4 temporal), a
    `visual_cond` DiT (2 x latent + 1 input channels, as the released T2V configs) with its modulation re-drawn
    (`redraw_modulation`), shift 5.

    The word-level tokenizer splits the part of the pipeline's system template before the prompt into 140
    tokens, not Qwen's 128, so the crop at 128 keeps its last 12 before the prompt (and, as with Qwen, the
    end-of-turn tokens after it): the DiT sees them as prompt tokens, in the pipeline's generation and in
    setseq's training alike."""
    # (heavy to import: loaded where used)
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        Kandinsky5T2VPipeline,
        Kandinsky5Transformer3DModel,
    )

    # (heavy to import: loaded where used)
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=1024)
    tokenizer_2 = build_word_tokenizer(TINY_WORDS, max_length=77)
    text = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, rope_theta=1e6, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1,
        bos_token_id=1, rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
    )  # fmt: skip
    vision = dict(
        depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16, patch_size=2,
        spatial_merge_size=1, temporal_patch_size=1, in_chans=3,
    )  # fmt: skip
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, pad_token_id=0, eos_token_id=1, bos_token_id=1
        )
    ).eval()
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2), hidden_size=8, intermediate_size=16, num_attention_heads=2,
            num_hidden_layers=1, max_position_embeddings=77, pad_token_id=0, eos_token_id=1, bos_token_id=1,
            projection_dim=8,
        )
    ).eval()  # fmt: skip
    vae = tiny_hunyuan_vae(latent_channels)  # HunyuanVideo's VAE
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=latent_channels, out_visual_dim=latent_channels, in_text_dim=16, in_text_dim2=8, time_dim=16,
        patch_size=(1, 2, 2), model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=layers,
        axes_dims=(4, 6, 6), visual_cond=True,
    ).eval()  # fmt: skip
    pipe = Kandinsky5T2VPipeline(
        transformer=redraw_modulation(transformer, seed), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def comfyui_slot(module: str) -> tuple[str, int]:
    """ComfyUI's name of a diffusers Kandinsky 5 module: the same name (comfy/ldm/kandinsky5/model.py)."""
    return module, 0


# Kandinsky 5.0 T2V Lite (ai-forever/Kandinsky-5 configs/config_5s_sft.yaml; diffusers'
# kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers): 2.0B parameters; Pro (configs/
# k5_pro_t2v_5s_sft_hd_parallel.yaml, less its NABLA settings): 19.3B. Text: 256 Qwen2.5-VL tokens (the
# reference configs' text length, a long prompt), 3584 wide, and CLIP ViT-L's 768-wide pooled embedding.
def _k5_shape(
    time_dim: int, width: int, ff: int, text_blocks: int, blocks: int, axes: tuple[int, int, int], note: str
) -> BenchShape:
    """A Kandinsky 5.0 T2V DiT (16 latent channels, Qwen2.5-VL text of 256 x 3584, CLIP pooled 768)."""
    config = dict(
        in_visual_dim=16, out_visual_dim=16, in_text_dim=3584, in_text_dim2=768, time_dim=time_dim,
        patch_size=(1, 2, 2), model_dim=width, ff_dim=ff, num_text_blocks=text_blocks, num_visual_blocks=blocks,
        axes_dims=axes, visual_cond=True,
    )  # fmt: skip
    return BenchShape(
        "kandinsky5", "Kandinsky5Transformer3DModel", config, 16, 256, 3584, pooled_dim=768,
        layer_keys=("num_visual_blocks",), note=note,
    )  # fmt: skip


FAMILY = Family(
    "kandinsky5",
    Kandinsky5Backbone.load,
    fps=24.0,  # the pipeline's example exports at 24 fps
    pipelines=(T2V_PIPELINE,),  # text-to-video only (Kandinsky5I2VPipeline: refused)
    comfyui=comfyui_slot,
    shapes={
        "kandinsky5-lite": _k5_shape(512, 1792, 7168, 2, 32, (16, 24, 24), "Kandinsky 5.0 T2V Lite (2B)"),
        "kandinsky5-pro": _k5_shape(
            1024,
            4096,
            16384,
            4,
            60,
            (32, 48, 48),
            "Kandinsky 5.0 T2V Pro (19B; NABLA when sampled, full attention as setseq trains it)",
        ),  # fmt: skip
    },
    tiny=(TinyModel("kandinsky5", build_tiny_kandinsky5, T2V_PIPELINE, 9, (32, 48), 2 * 10),),
    backbone=Kandinsky5Backbone,
)
