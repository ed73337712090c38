"""LTX-2 text-to-video through diffusers (`LTX2Pipeline`, `LTX2VideoTransformer3DModel`, `AutoencoderKLLTX2Video`,
`AutoencoderKLLTX2Audio`), e.g. `Lightricks/LTX-2` (19B: a 14B video stream and a 5B audio stream) in diffusers
layout. **Video only**: the audio branch stays frozen and untouched, and generation writes no audio.

- Audio: LTX-2's DiT runs a video and an audio stream side by side in every block, joined by audio-to-video and
  video-to-audio cross-attention. Training calls it with `isolate_modalities=True`, which skips both
  cross-modal attentions, so the video prediction does not depend on the audio stream at all (a test perturbs
  every audio weight and sees the same prediction). The DiT still wants audio inputs, so it gets the smallest
  ones: one audio token of zeros and one zero audio text token; their output is dropped. This is the video-only
  mode of Lightricks' own trainer (ltx-trainer's `with_audio: false` runs the model with no audio modality),
  chosen over feeding noise at the video's sigma because there is no audio target to learn from.
  Generation goes through `LTX2Pipeline` itself, which denoises audio alongside (a few audio tokens, cheap; the
  video attends to it as in LTX-2's own sampling, the pairing of Lightricks' video-only LoRAs); only `.frames`
  is kept. No LoRA sits on the audio stream, the audio VAE or the vocoder: with video-only training they would
  receive no gradient.
- What LTX-2 shares with LTX-Video is inherited from `LTXBackbone`: the latent normalisation
  (z - latents_mean) * scaling_factor / latents_std (the inverse of `LTX2Pipeline._denormalize_latents`), a
  causal VAE compressing 8x in time and 32x in space (clips of 8k+1 frames, sizes multiples of 32; a single
  frame, stage 1, encodes to the one-frame first latent), rectified flow with the scheduler's
  resolution-dependent shift exp(mu) at the default clip (`info.extra["sigma_shift"]`), the LoRA target names
  and the decoding. What differs is here: the text, the DiT call, the audio, the pipeline's arguments.
- DiT call: packed tokens (B, f*h*w, C) and the latent grid; timestep sigma * 1000, also passed as `sigma`
  (LTX-2.3's prompt modulation), as the pipeline does; RoPE positions in seconds at `FRAME_RATE` (the
  pipeline's 24 fps, in training and in sampling).
- Text: Gemma 3 (every layer's hidden states, left padding, 1024 tokens) then the pipeline's text connectors,
  both through the pipeline's own `_get_gemma_prompt_embeds` and `connectors`. The cached embedding is the
  connectors' *video* output. The connectors move the real tokens to the front and fill the rest with learned
  registers, all of which the DiT attends to; rows the connectors mask out come back as zeros. So
  `PromptEmbeds.mask` marks the real tokens (for token masking, which zeroes a dropped token's row) and the
  DiT's attention mask is the non-zero rows: the connectors' own mask, minus the dropped tokens. Textual
  inversion is refused (no `tokenizer`), as for HunyuanVideo.
- LoRA targets: the video stream's linears only, the same names as LTX-Video: self-attention
  `transformer_blocks.N.attn1.{to_q,to_k,to_v,to_out.0}`, cross-attention to the text `attn2.*`, and the FFN
  `ff.net.0.proj` / `ff.net.2`. Not `audio_attn1`, `audio_attn2`, `audio_ff` (audio stream), nor
  `audio_to_video_attn` / `video_to_audio_attn` (cross-modal, skipped in training), nor LTX-2.3's
  `to_gate_logits`, the modulation and embedding linears, or the connectors.
- Generation: the pipeline's defaults, except that spatio-temporal guidance is off for a DiT without
  `perturbed_attn` (its extra pass would perturb nothing) and LTX-2.0 (no cross-attention modulation) samples
  with its legacy `use_cross_timestep=False`, as the pipeline's docstring says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import BenchShape, Family, TinyModel
from setseq.backbones.diffusers_backbone import plain_config
from setseq.backbones.ltx import LTXBackbone, comfyui_slot, ltx_scheduler
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer
from setseq.prompts import PromptEmbeds

FRAME_RATE = 24.0  # LTX2Pipeline's default frame_rate: the DiT's RoPE time unit, in training and sampling
TEXT_LENGTH = 1024  # LTX2Pipeline's default max_sequence_length
# LTX2Pipeline's values for the scheduler keys of the dynamic shift that a config may lack
LTX2_SHIFT_DEFAULTS = {
    "base_image_seq_len": 1024,
    "max_image_seq_len": 4096,
    "base_shift": 0.95,
    "max_shift": 2.05,
}


class LTX2Backbone(LTXBackbone):
    """LTX-2 T2V behind the `Backbone` protocol, video only: LTX-Video's latents, another text encoder and DiT."""

    name, label, pipeline_class = "ltx2", "LTX-2", "LTX2Pipeline"
    default_steps, default_guidance = 30, 3.0  # LTX2Pipeline's defaults
    text_length = TEXT_LENGTH
    _native_size = (512, 768, 121)  # LTX2Pipeline's default height, width, frames
    _shift_defaults = LTX2_SHIFT_DEFAULTS

    def setup(self, model_id: str) -> dict[str, Any]:
        fields = super().setup(model_id)  # latent normalisation, strides, default size, shift, LoRA targets
        # No `tokenizer` for textual inversion (`setseq.train.embeddings` refuses it): the prompt goes through
        # Gemma and the connectors, by the pipeline's own helpers.
        self.tokenizer = None
        tcfg = self.transformer.config
        self.text_length = min(
            TEXT_LENGTH, int(self.pipe.tokenizer.model_max_length)
        )  # tiny tokenizers: less
        # The audio inputs of a video-only call: one token each, of the widths the DiT projects from.
        self.audio_channels = int(tcfg.audio_in_channels)
        self.audio_text_dim = int(
            tcfg.caption_channels if tcfg.use_prompt_embeddings else tcfg.audio_cross_attention_dim
        )
        fields["extra"].update(
            frame_rate=FRAME_RATE,
            audio="frozen, no LoRA; training isolates the video stream; generation drops the audio",
        )
        return fields

    def fingerprint_configs(self) -> list[dict]:
        return super().fingerprint_configs() + [plain_config(self.pipe.connectors.config)]

    def pipeline_kwargs(self) -> dict[str, Any]:
        cfg = self.transformer.config
        kwargs: dict[str, Any] = {"frame_rate": FRAME_RATE, "use_cross_timestep": bool(cfg.cross_attn_mod)}
        if not cfg.perturbed_attn:  # STG's pass would equal the plain one: skip it (its guidance term is 0)
            kwargs.update(stg_scale=0.0, audio_stg_scale=0.0, spatio_temporal_guidance_blocks=None)
        return kwargs

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        gemma, tok_mask = self.pipe._get_gemma_prompt_embeds(
            prompts, max_sequence_length=self.text_length, device=self.device
        )  # (B, L, D * layers), (B, L) left-padded
        video, _, _ = self.pipe.connectors(gemma, tok_mask, padding_side=self.pipe.tokenizer.padding_side)
        if self.pipe.connectors.video_connector.learnable_registers is not None:
            # the connector put the real tokens first, in order, and registers after them
            positions = torch.arange(tok_mask.shape[1], device=tok_mask.device)
            real = positions[None] < tok_mask.sum(dim=1, keepdim=True)
        else:
            real = tok_mask.bool()
        return PromptEmbeds(video.float(), real)  # (B, L, D_video), (B, L)

    # -- diffusion -------------------------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        # (heavy to import: loaded where used)
        from diffusers import LTX2Pipeline

        b, _, f, h, w = noisy.shape
        grid = (f // self.patch_t, h // self.patch, w // self.patch)
        tokens = LTX2Pipeline._pack_latents(noisy.to(self.device, self.dtype), self.patch, self.patch_t)
        embeds = prompt.embeds.to(self.device, self.dtype)  # (B, L, D)
        t = sigmas.to(self.device).float() * 1000.0
        zeros = dict(device=self.device, dtype=self.dtype)
        video, _audio = self.transformer(
            hidden_states=tokens,  # (B, N, C)
            audio_hidden_states=torch.zeros(b, 1, self.audio_channels, **zeros),
            encoder_hidden_states=embeds,
            audio_encoder_hidden_states=torch.zeros(b, 1, self.audio_text_dim, **zeros),
            timestep=t,
            sigma=t,
            encoder_attention_mask=embeds.ne(0).any(dim=-1),  # the connectors' mask minus dropped tokens
            audio_encoder_attention_mask=torch.ones(b, 1, device=self.device),
            num_frames=grid[0],
            height=grid[1],
            width=grid[2],
            fps=FRAME_RATE,
            audio_num_frames=1,
            isolate_modalities=True,  # no audio-to-video attention: the video stream alone
            return_dict=False,
        )
        out = LTX2Pipeline._unpack_latents(video, *grid, self.patch, self.patch_t)  # (B, C, f, h, w)
        return out.float()


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
# LTX-2.5 is LTX-2's DiT (`LTX2VideoTransformer3DModel`) with these switches on (the 2.3 ones too: gated
# attention, cross-attention modulation, the connectors' per-modality projections in place of prompt
# embeddings): a config of this family, not another one. The K/V modulation apart from the timestep and the
# keyframe position embedding (which LTX2Pipeline's text-to-video call does not pass) change no hook.
LTX25_SWITCHES = dict(
    gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True,
    use_prompt_embeddings=False, ff_bias=False, use_prompt_adaln_single=False, use_keyframes_abs_pos_embedding=True,
)  # fmt: skip


def build_tiny_ltx25(folder: str | Path, seed: int = 0, *, layers: int = 2) -> Path:
    """Write a tiny random LTX-2.5 T2V pipeline: `build_tiny_ltx2` with LTX-2.5's switches."""
    return build_tiny_ltx2(folder, seed, layers=layers, version="2.5")


def _tiny_ltx2_dit(width: int, factor: int, layers: int, latent_channels: int, v25: bool) -> tuple[Any, Any]:
    """The tiny text connectors and DiT of `build_tiny_ltx2` (LTX-2.5's: its switches, the connectors'
    per-modality projections)."""
    # (heavy to import: loaded where used)
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    connectors = LTX2TextConnectors(
        caption_channels=width, text_proj_in_factor=factor,
        video_connector_num_attention_heads=2, video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=8, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=4 if v25 else 8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=8, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split",
        **(dict(per_modality_projections=True, video_hidden_dim=16, audio_hidden_dim=8) if v25 else {}),
    ).eval()  # fmt: skip
    transformer = LTX2VideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=layers, caption_channels=width,
        rope_double_precision=False, rope_type="split", **(LTX25_SWITCHES if v25 else {}),
    ).eval()  # fmt: skip
    return connectors, transformer


def build_tiny_ltx2(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 4, version: str = "2"
) -> Path:
    """Write a tiny random LTX-2 T2V pipeline (`LTX2Pipeline`): a tiny `Gemma3ForConditionalGeneration` (its
    config built in code, with a word-level tokenizer), text connectors with learned registers (as LTX-2's), a
    video VAE with LTX-2's real strides (32 spatial, 8 temporal: a 4x4 pixel patch and three spatio-temporal
    downsamplings), and the audio parts (audio VAE, vocoder, the DiT's audio stream) that video-only training
    leaves frozen.

    DiT, connectors, audio VAE and vocoder after diffusers' `tests/pipelines/ltx2/testing_utils.py`; the
    scheduler is LTX-2's (resolution-dependent shift)."""
    # (heavy to import: loaded where used)
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        LTX2Pipeline,
    )

    # (heavy to import: loaded where used)
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    folder, v25 = Path(folder), version == "2.5"
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=32)  # 32 text tokens: 4 x the 8 registers
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=16, pad_token_id=0,
        eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )  # fmt: skip
    text_encoder = Gemma3ForConditionalGeneration(
        Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    ).eval()
    width = text.hidden_size  # Gemma's width: the connectors' and the DiT's caption channels
    connectors, transformer = _tiny_ltx2_dit(width, text.num_hidden_layers + 1, layers, latent_channels, v25)
    vae = AutoencoderKLLTX2Video(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        down_block_types=("LTX2VideoDownBlock3D",) * 3, layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
        downsample_type=("spatiotemporal",) * 3, upsample_type=("spatiotemporal",) * 3,
        upsample_residual=(False,) * 3, upsample_factor=(1, 1, 1), patch_size=4, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()  # fmt: skip
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()  # fmt: skip
    vocoder = LTX2Vocoder(
        in_channels=audio_vae.config.output_channels * audio_vae.config.mel_bins, hidden_channels=32,
        out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2], resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=16000,
    ).eval()  # fmt: skip
    pipe = LTX2Pipeline(
        scheduler=ltx_scheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer,
        connectors=connectors, transformer=transformer, vocoder=vocoder,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# The transformer/config.json of Lightricks/LTX-2 (diffusers layout; the rest are the class's defaults):
# 18.9B, the model card's "19B" (ltx-2-19b-dev), video stream and audio stream together. Text: the
# connectors' video output, 1024 tokens of Gemma 3's width.
LTX2_DIMS = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_layers=48, rope_type="split",
    num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096, caption_channels=3840,
    audio_in_channels=128, audio_out_channels=128, audio_num_attention_heads=32, audio_attention_head_dim=64,
    audio_cross_attention_dim=2048,
)  # fmt: skip
FAMILY = Family(
    "ltx2",
    LTX2Backbone.load,
    fps=24.0,
    pipelines=("LTX2Pipeline",),  # LTX-2: video only (the audio branch frozen)
    comfyui=comfyui_slot,  # (ComfyUI's LTXAV names the video stream's layers as LTX-Video's)
    shapes={
        "ltx-2": BenchShape(
            "ltx2",
            "LTX2VideoTransformer3DModel",
            LTX2_DIMS,
            128,
            1024,
            3840,
            note="LTX-2 (19B: video 14B + audio 5B; trained video only)",
        ),  # fmt: skip
        # LTX-2's dimensions with the 2.5 switches (18.9B): the published 2.5 config.json was not read (no hub
        # here). Its text: the connectors' per-modality projection to the DiT's width.
        "ltx-2.5": BenchShape(
            "ltx2",
            "LTX2VideoTransformer3DModel",
            LTX2_DIMS | LTX25_SWITCHES,
            128,
            1024,
            4096,
            note="LTX-2.5 (LTX-2's dimensions with the 2.5 switches; trained video only)",
        ),  # fmt: skip
    },
    tiny=(
        TinyModel("ltx2", build_tiny_ltx2, "LTX2Pipeline", 9, (64, 64), 2 * (4 + 4 + 2)),
        # (LTX-2.5's attn1 / attn2 `to_gate_logits` stay out: the same 20 linears)
        TinyModel("ltx25", build_tiny_ltx25, "LTX2Pipeline", 9, (64, 64), 2 * (4 + 4 + 2)),
    ),
    backbone=LTX2Backbone,
)
