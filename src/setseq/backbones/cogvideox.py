"""CogVideoX text-to-video through diffusers (`CogVideoXPipeline`, `CogVideoXTransformer3DModel`,
`AutoencoderKLCogVideoX`): CogVideoX-2B, -5B and CogVideoX 1.5-5B in diffusers layout.

- Objective: CogVideoX is *not* flow matching. It is a DDPM with v-prediction (`CogVideoXDDIMScheduler` /
  `CogVideoXDPMScheduler`, `prediction_type="v_prediction"`, zero-terminal-SNR betas with an SNR shift). So this
  backbone defines its own forward process and target (hooks of `setseq.backbones.base.Backbone`):
  `sample_sigmas` draws an integer timestep t uniformly from [0, num_train_timesteps) and returns t / T;
  `noisy` is sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; `training_target` is v = sqrt(abar_t) noise - sqrt(1 -
  abar_t) x0 (noise for an epsilon-prediction scheduler), with abar = the scheduler's own `alphas_cumprod`;
  `predict` feeds the DiT the integer t and returns its raw output. The MSE on v is the loss of diffusers'
  CogVideoX LoRA example (x0-MSE weighted by 1 / (1 - abar_t)).
- Latents: the VAE's posterior mean times `scaling_factor` (no shift), exactly what `CogVideoXPipeline`
  divides by before decoding. The DiT takes them frames-first, (B, f, C, h, w); `predict` permutes.
- Positions: CogVideoX-5B / 1.5 use 3D rotary embeddings, which depend on the latent height, width and
  frame count: `predict` builds them for each input with the pipeline's own
  `_prepare_rotary_positional_embeddings`, as generation does (2B uses sin-cos embeddings inside the DiT).
- CogVideoX 1.5 (`patch_size_t=2`) needs an even number of latent frames. Like the pipeline, which pads the
  latent video at the front and drops the padding after denoising, `predict` pads the front with copies of
  the first latent frame and drops their output, so a 1-frame latent (stage 1) and odd clips both work.
- Single frames (stage 1): the VAE is causal, so one frame encodes to one latent frame (the way CogVideoX's
  image-to-video models encode their first frame); the DiT accepts any number of latent frames.
- Text: T5, padded to the DiT's `max_text_seq_length` (226) with T5's own output at pad positions, exactly as
  the pipeline does (the DiT takes no attention mask; `mask` only marks real tokens for token masking).
  With no mask to clear, token masking acts only by zeroing a dropped token's embedding.
- LoRA targets: CogVideoX has no cross-attention. Its blocks run one joint self-attention over the
  concatenated text and video tokens with *shared* projections (`attn1.to_q/k/v/to_out.0`), so LoRA on those
  covers both the text and the video side; plus the FFN (`ff.net.0.proj`, `ff.net.2`). The adaptive-norm
  linears (`norm1/norm2.linear`) are modulation, not attention, and are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from setseq.backbones.base import BenchShape, Family, TinyModel
from setseq.backbones.diffusers_backbone import DiffusersBackbone, plain_config
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer, tiny_t5
from setseq.errors import SetseqError
from setseq.functional import v_prediction as vp
from setseq.prompts import PromptEmbeds

COGVIDEOX_LORA_TARGETS = (
    r"^transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$",
)


class CogVideoXBackbone(DiffusersBackbone):
    """CogVideoX T2V behind the `Backbone` protocol, with its v-prediction DDPM objective."""

    name, label, pipeline_class = "cogvideox", "CogVideoX", "CogVideoXPipeline"
    vae_fp32 = False  # the VAE stays in `dtype`: CogVideoXPipeline hands it latents in the DiT's dtype
    default_steps, default_guidance = 50, 6.0

    def setup(self, model_id: str) -> dict[str, Any]:
        vcfg, tcfg, scfg = self.vae.config, self.transformer.config, self.pipe.scheduler.config
        if tcfg.in_channels != vcfg.latent_channels:
            raise SetseqError(
                f"{model_id} is an image-to-video CogVideoX (the DiT takes {tcfg.in_channels} channels, the VAE "
                f"makes {vcfg.latent_channels})",
                "use a text-to-video CogVideoX checkpoint (CogVideoX-2b, CogVideoX-5b, CogVideoX1.5-5B)",
            )
        self.prediction_type = scfg.prediction_type
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise SetseqError(
                f"{model_id}'s scheduler predicts '{self.prediction_type}', which setseq does not train",
                "use a CogVideoX checkpoint with its v_prediction scheduler",
            )
        self.num_train_timesteps = int(scfg.num_train_timesteps)
        self.alphas_cumprod = self.pipe.scheduler.alphas_cumprod.to(torch.float32)  # (T,) abar_t, on CPU
        self.scaling_factor = float(vcfg.scaling_factor)  # latents = z * scaling_factor, no shift
        self.text_length = int(tcfg.max_text_seq_length)
        ss = 2 ** (len(vcfg.block_out_channels) - 1)
        st = int(vcfg.temporal_compression_ratio)
        return dict(
            # The native size the DiT was configured for (2B/5B: 480x720, 49 frames; 1.5: 768x1360, 81).
            height=tcfg.sample_height * ss,
            width=tcfg.sample_width * ss,
            frames=tcfg.sample_frames,
            frame_multiple=st,
            spatial_multiple=ss * tcfg.patch_size,
            lora_targets=COGVIDEOX_LORA_TARGETS,
            extra={
                "objective": f"ddpm-{self.prediction_type}",
                "num_train_timesteps": self.num_train_timesteps,
                "vae_scale_factor_spatial": ss,
                "patch_size": tcfg.patch_size,
                "patch_size_t": tcfg.patch_size_t,
            },
        )

    def fingerprint_configs(self) -> list[dict]:
        # The scheduler's config too: it defines the objective (prediction type, betas).
        tcfg, vcfg, scfg = self.transformer.config, self.vae.config, self.pipe.scheduler.config
        return [
            plain_config(tcfg),
            plain_config(vcfg),
            plain_config(scfg),
            self.text_encoder.config.to_dict(),
        ]

    # Text: the default `encode_prompt`, CogVideoXPipeline._get_t5_prompt_embeds's steps (no mask to T5).

    # -- diffusion: v-prediction DDPM ------------------------------------------------------------------------
    def _timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        t = (sigmas.detach().float().cpu() * self.num_train_timesteps).round().long()
        return t.clamp(0, self.num_train_timesteps - 1)  # (B,) integer DDPM timesteps

    def _abar(self, sigmas: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[self._timesteps(sigmas)]  # (B,)

    def sample_sigmas(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        between: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """t / T for integer DDPM timesteps t drawn uniformly from [0, T) (T = num_train_timesteps). One DiT:
        no expert's range (`between`) to draw within."""
        if between is not None:
            raise SetseqError("CogVideoX is one DiT: it has no expert's range of timesteps", "drop between=")
        t = vp.sample_timesteps(batch, self.num_train_timesteps, generator)
        return (t.float() / self.num_train_timesteps).to(self.device)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The scheduler's `add_noise` at t = sigmas * T."""
        return vp.add_noise(x0, noise, self._abar(sigmas))

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """v (the scheduler's `get_velocity`) for v-prediction, the noise for an epsilon-prediction scheduler."""
        if self.prediction_type == "epsilon":
            return noise
        return vp.velocity_target(x0, noise, self._abar(sigmas))

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        """The DiT's raw output (v for v-prediction) for noisy latents (B, C, f, h, w) at t = sigmas * T."""
        tcfg = self.transformer.config
        x = noisy.to(self.device, self.dtype).permute(
            0, 2, 1, 3, 4
        )  # (B, f, C, h, w): CogVideoX is frames-first
        pad = 0
        if tcfg.patch_size_t is not None and x.shape[1] % tcfg.patch_size_t:
            # CogVideoX 1.5 patches 2 latent frames together: pad the front, as the pipeline does.
            pad = tcfg.patch_size_t - x.shape[1] % tcfg.patch_size_t
            x = torch.cat([x[:, :1].expand(-1, pad, -1, -1, -1), x], dim=1)
        rotary = None
        if tcfg.use_rotary_positional_embeddings:
            ss = self.info.extra["vae_scale_factor_spatial"]
            rotary = self.pipe._prepare_rotary_positional_embeddings(
                x.shape[3] * ss, x.shape[4] * ss, x.shape[1], self.device
            )
        out = self.transformer(
            hidden_states=x,
            encoder_hidden_states=prompt.embeds.to(self.device, self.dtype),
            timestep=self._timesteps(sigmas).to(self.device),
            image_rotary_emb=rotary,
            return_dict=False,
        )[0]  # (B, f + pad, C, h, w)
        return out[:, pad:].permute(0, 2, 1, 3, 4).float()


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
def build_tiny_cogvideox(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 4
) -> Path:
    """Write a tiny random CogVideoX T2V pipeline (5B-style: rotary positions, no learned positional
    embeddings) with CogVideoX-2B's real v-prediction DDIM scheduler config (zero-terminal-SNR, SNR shift 3).

    Sizes after diffusers' `tests/pipelines/cogvideo/test_cogvideox.py`: VAE stride 8 spatial / 4 temporal,
    4 latent channels, patch 2; head dim 16 so the 3D rotary split (t 4, h 6, w 6) is whole."""
    # (heavy to import: loaded where used)
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    max_text = 16
    tokenizer = build_word_tokenizer(TINY_WORDS, max_length=max_text)
    text_encoder = tiny_t5(len(tokenizer))
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=latent_channels, out_channels=latent_channels,
        time_embed_dim=8,
        text_embed_dim=32, num_layers=layers, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=max_text, use_rotary_positional_embeddings=True,
    ).eval()  # fmt: skip
    blocks = ("CogVideoXDownBlock3D",) * 4
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=blocks, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=latent_channels, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()  # fmt: skip
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        snr_shift_scale=3.0, timestep_spacing="trailing",
    )  # fmt: skip
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


FAMILY = Family(
    "cogvideox",
    CogVideoXBackbone.load,
    fps=8.0,
    pipelines=("CogVideoXPipeline",),
    shapes={
        "cogvideox-5b": BenchShape(
            "cogvideox",
            "CogVideoXTransformer3DModel",
            dict(
                num_attention_heads=48,
                attention_head_dim=64,
                in_channels=16,
                out_channels=16,
                time_embed_dim=512,
                text_embed_dim=4096,
                num_layers=42,
                sample_width=90,
                sample_height=60,
                sample_frames=49,
                patch_size=2,
                temporal_compression_ratio=4,
                max_text_seq_length=226,
                use_rotary_positional_embeddings=True,
                use_learned_positional_embeddings=False,
            ),  # fmt: skip
            16,
            226,
            4096,
            note="CogVideoX-5B",
        )
    },
    tiny=(TinyModel("cogvideox", build_tiny_cogvideox, "CogVideoXPipeline", 9, (32, 32), 2 * (4 + 2)),),
    backbone=CogVideoXBackbone,
)
