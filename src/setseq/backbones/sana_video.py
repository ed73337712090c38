"""Sana Video text-to-video through diffusers (`SanaVideoPipeline`, `SanaVideoTransformer3DModel`,
`SanaLoraLoaderMixin`), e.g. `Efficient-Large-Model/SANA-Video_2B_480p_diffusers` (2B, Gemma 2 text encoder, the
Wan 2.1 VAE). Text-to-video only: a `SanaImageToVideoPipeline` folder is refused (its first frame is pinned
as latent frame 0 with a per-token timestep of 0, a conditioning that setseq's `ImageCondition` path does not
express).

- Objective: rectified flow as Wan's (x_t = (1 - sigma) x0 + sigma noise, the DiT predicts noise - x0, timestep
  sigma * 1000): the flow DPM-Solver (`prediction_type="flow_prediction"`) reads the output so. Training sigmas:
  u uniform, then the scheduler's `flow_shift`.
- Latents: the pipeline's un-normalisation inverted, (z - latents_mean) / latents_std, with the Wan VAE's config
  values (or the LTX-2 VAE's buffers, which the pipeline also takes: untested here, no tiny build has it; the
  2B 480p checkpoint's VAE is Wan's); strides are the pipeline's.
- Text: Gemma 2 through the pipeline's own `encode_prompt`, with the pipeline's default "complex human
  instruction" prepended (as generation runs it, and as SimpleTuner trains Sana Video), so training sees the
  conditioning that `SanaVideoPipeline(...)` gives a user's prompt. The pipeline keeps the first token and the
  last 299 (`max_sequence_length` 300, less one) of instruction + prompt: the instruction's tail, the prompt,
  padding.
  `PromptEmbeds.mask` marks the prompt's own tokens (token masking drops only those); padding rows are zeroed
  (the DiT masks them: the output does not change), and the DiT's attention mask is the non-zero rows, so a
  token that token masking drops leaves the attention too.
- LoRA targets: the attention linears of every block, self (linear attention) and cross, as SimpleTuner's
  default. The FFN (`GLUMBTempConv`) is made of convolutions only, and setseq's LoRA is on linears only.
- Generation: the pipeline's defaults (50 steps, guidance 6.0), at the exact size asked
  (`use_resolution_binning=False`: the pipeline would otherwise snap the size to an aspect-ratio bin and resize
  back), with `frames=` (the pipeline's name for the clip length).
- ComfyUI: no native Sana Video model in ComfyUI (`comfy/ldm` has no Sana, and ComfyUI's Sana image request is
  open, Comfy-Org/ComfyUI#6136), so there are no key names to write: the export is diffusers-only.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import BenchShape, Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone, index_class_name
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds

PIPELINE, I2V_PIPELINE = "SanaVideoPipeline", "SanaImageToVideoPipeline"
TEXT_LENGTH = 300  # SanaVideoPipeline's default max_sequence_length
# Every linear of self-attention (attn1) and cross-attention (attn2) in the DiT blocks; the FFN has none.
SANA_VIDEO_LORA_TARGETS = (r"^transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",)
# The default size for a checkpoint's `sample_size`: the pipeline's aspect-ratio bin of height / width 0.57
# (16:9 landscape) at 480p (its default 480x832) and 720p
NATIVE_SIZE = {30: (480, 832), 22: (704, 1280)}
# The VAEs whose latents the pipeline un-normalises with a mean and std (another VAE is refused)
_VAES = ("AutoencoderKLWan", "AutoencoderKLLTX2Video")


@functools.cache
def default_instruction() -> tuple[str, ...]:
    """`SanaVideoPipeline.__call__`'s default `complex_human_instruction`: what generation prepends."""
    # (heavy to import: loaded where used)
    from diffusers import SanaVideoPipeline

    return tuple(
        inspect.signature(SanaVideoPipeline.__call__).parameters["complex_human_instruction"].default
    )


class SanaVideoBackbone(DiffusersBackbone):
    """Sana Video T2V behind the `Backbone` protocol."""

    name, label, pipeline_class = "sana-video", "Sana Video", PIPELINE
    vae_fp32 = (
        True  # the pipeline casts latents to the VAE's dtype before decoding (diffusers' example: fp32)
    )
    default_steps, default_guidance = 50, 6.0  # SanaVideoPipeline's defaults
    text_length = TEXT_LENGTH

    @classmethod
    def pipeline_for(cls, model_id: str) -> type:
        """`SanaVideoPipeline`; a folder whose model_index.json names another pipeline (the image-to-video one,
        or another family's) is refused in one line."""
        # (heavy to import: loaded where used)
        import diffusers

        found = index_class_name(model_id)
        if found == I2V_PIPELINE:
            raise SetseqError(
                f"{model_id} is a Sana Video image-to-video checkpoint ({I2V_PIPELINE}); setseq supports Sana "
                f"Video text-to-video only ({PIPELINE})",
                f"use a checkpoint whose model_index.json names {PIPELINE} "
                "(e.g. Efficient-Large-Model/SANA-Video_2B_480p_diffusers)",
            )
        if found is not None and found != PIPELINE:
            raise SetseqError(
                f"{model_id} holds a {found[:80]!r} pipeline, not Sana Video's {PIPELINE}",
                f"use a Sana Video text-to-video checkpoint (model_index.json: {PIPELINE}), or pass the --backbone "
                "of the folder's family",
            )
        return getattr(diffusers, PIPELINE)

    def setup(self, model_id: str) -> dict[str, Any]:
        pipe, vae, tcfg = self.pipe, self.vae, self.transformer.config
        kind = type(vae).__name__
        if kind not in _VAES:
            raise SetseqError(
                f"{model_id} has a {kind} VAE; setseq runs Sana Video with the Wan or LTX-2 VAE",
                "use a Sana Video video checkpoint (e.g. Efficient-Large-Model/SANA-Video_2B_480p_diffusers)",
            )
        if kind == "AutoencoderKLWan":
            mean, std = vae.config.latents_mean, vae.config.latents_std
        else:
            mean, std = vae.latents_mean.tolist(), vae.latents_std.tolist()
        self.latents_mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.sigma_shift = float(getattr(pipe.scheduler.config, "flow_shift", None) or 1.0)
        self.instruction = list(default_instruction())
        st, ss = int(pipe.vae_scale_factor_temporal), int(pipe.vae_scale_factor_spatial)
        patch = tuple(tcfg.patch_size)
        if self.is_tiny():
            height, width, frames = 32, 32, 9
        else:  # the pipeline's defaults (81 frames), at the checkpoint's resolution
            (height, width), frames = NATIVE_SIZE.get(int(tcfg.sample_size), NATIVE_SIZE[30]), 81
        return dict(
            height=height,
            width=width,
            frames=frames,
            frame_multiple=st * int(patch[0]),
            spatial_multiple=ss * int(patch[1]),
            lora_targets=SANA_VIDEO_LORA_TARGETS,
            extra={
                "flow_shift": self.sigma_shift,
                "text_tokens": self.text_length,
                "complex_human_instruction": "the pipeline's default, in training and generation",
            },
        )

    def pipeline_kwargs(self) -> dict[str, Any]:
        # The exact size asked (no aspect-ratio bins) and the instruction training encoded with.
        return {"use_resolution_binning": False, "complex_human_instruction": self.instruction}

    def clip_kwargs(self, frames: int, negative_prompt: str) -> dict[str, Any]:
        return {"frames": frames, "negative_prompt": negative_prompt}  # the pipeline encodes "" itself

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=self.device,
            max_sequence_length=self.text_length,
            complex_human_instruction=self.instruction,
        )  # (B, L, D), (B, L): instruction tail + prompt, right-padded
        mask = mask.bool()
        embeds = embeds.float() * mask.unsqueeze(-1)  # padding rows zeroed: the DiT masks them anyway
        own = self._prompt_positions(prompts, mask.shape[1]).to(mask.device)
        return PromptEmbeds(embeds, mask & own)

    def _prompt_positions(self, prompts: list[str], length: int) -> torch.Tensor:
        """(B, L) bool: the positions of the pipeline's kept tokens that hold the prompt itself, not the
        instruction or special tokens. Tokenised as `SanaVideoPipeline._get_gemma_prompt_embeds` does, with the
        character offsets; a token that covers any character of the prompt is the prompt's."""
        tok, pipe = self.pipe.tokenizer, self.pipe
        head = "\n".join(self.instruction)
        total = len(tok.encode(head)) + length - 2 if head else length
        enc = tok(
            [head + p for p in pipe._text_preprocessing(prompts)],
            padding="max_length",
            max_length=total,
            truncation=True,
            add_special_tokens=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        own = enc.offset_mapping[..., 1] > len(head)  # (B, total)
        return own[:, [0, *range(total - length + 1, total)]]  # the pipeline's `select_index`

    # -- diffusion -------------------------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        embeds = prompt.embeds.to(self.device, self.dtype)  # (B, L, D)
        out = self.transformer(
            noisy.to(self.device, self.dtype),  # (B, C, f, h, w)
            encoder_hidden_states=embeds,
            encoder_attention_mask=embeds.ne(0).any(dim=-1).long(),  # the real tokens, less dropped ones
            timestep=sigmas.to(self.device).float() * 1000.0,
            return_dict=False,
        )[0]
        return out[
            :, : noisy.shape[1]
        ].float()  # (a learned-sigma DiT's second half dropped, as the pipeline)


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
def build_tiny_sana_video(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 16
) -> Path:
    """Write a tiny random Sana Video T2V pipeline (`SanaVideoPipeline`): a tiny `Gemma2Model` with a word-level
    tokenizer built in code (long enough for the pipeline's instruction + 300 prompt tokens), the tiny Wan 2.1
    VAE of `build_tiny_wan` (8x space, 4x time), a `SanaVideoTransformer3DModel` of width 24, and the flow
    DPM-Solver (shift 8), as `SanaVideoPipeline` is built."""
    # (heavy to import: loaded where used)
    from diffusers import (
        AutoencoderKLWan,
        DPMSolverMultistepScheduler,
        SanaVideoPipeline,
        SanaVideoTransformer3DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=1024)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
            pad_token_id=0, eos_token_id=1, bos_token_id=1,
        )
    ).eval()  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=latent_channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()  # fmt: skip
    transformer = SanaVideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=12,
        num_layers=layers, num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24,
        caption_channels=16, mlp_ratio=2.5, patch_size=(1, 2, 2), sample_size=8, rope_max_seq_len=64,
    ).eval()  # fmt: skip
    scheduler = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0
    )
    pipe = SanaVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# The transformer/config.json of Efficient-Large-Model/SANA-Video_2B_480p_diffusers (the class's defaults but
# mlp_ratio 3): 2.06B. Text: Gemma 2 2B's 300 tokens, 2304 wide.
FAMILY = Family(
    "sana-video",
    SanaVideoBackbone.load,
    fps=16.0,  # diffusers' example exports at 16 fps
    # text-to-video only: SanaImageToVideoPipeline is refused, by `--model` alone as any unsupported pipeline
    # is, and with `--backbone sana-video` by `pipeline_for`
    pipelines=(PIPELINE,),
    comfyui=None,  # no native Sana Video model in ComfyUI: no key names to write (diffusers-only)
    shapes={
        "sana-video-2b": BenchShape(
            "sana-video",
            "SanaVideoTransformer3DModel",
            dict(
                in_channels=16,
                out_channels=16,
                num_attention_heads=20,
                attention_head_dim=112,
                num_layers=20,
                num_cross_attention_heads=20,
                cross_attention_head_dim=112,
                cross_attention_dim=2240,
                caption_channels=2304,
                mlp_ratio=3.0,
                patch_size=(1, 2, 2),
                sample_size=30,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,
            ),  # fmt: skip
            16,
            TEXT_LENGTH,
            2304,
            note="Sana Video 2B 480p",
        )
    },
    tiny=(TinyModel("sana-video", build_tiny_sana_video, PIPELINE, 9, (32, 32), 2 * 8),),
    backbone=SanaVideoBackbone,
)
