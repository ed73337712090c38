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

from typing import Any

import torch

from setseq.backbones.base import register_backbone
from setseq.backbones.diffusers_backbone import plain_config
from setseq.backbones.ltx import LTXBackbone
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
    native_size = (512, 768, 121)  # LTX2Pipeline's default height, width, frames
    shift_defaults = LTX2_SHIFT_DEFAULTS

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


load_ltx2 = register_backbone("ltx2")(LTX2Backbone.load)
