"""The mechanics every diffusers backbone shares, written once.

`DiffusersBackbone` implements the `Backbone` protocol over a diffusers text-to-video pipeline in terms of a few
per-family hooks (one subclass per family, as finetrainers' `ModelSpecification`). Shared here: loading the
pipeline, the latent normalisation formula and the VAE round trip, flow-matching sigma sampling at the
family's shift, the self-conditioning refusal, generation through the pipeline (the `--image` checks
included), T5 tokenisation, the fingerprint, the tiny-model check.

A family file (`wan.py`, `ltx.py`, `hunyuan.py`, ...: `registry.BUILTIN`) holds only what differs, and its
`FAMILY` record (ComfyUI names, bench shapes, tiny model):
- class attributes: registry `name`, `label` (the family in messages), `pipeline_class`, `vae_fp32`, the
  generation defaults, `text_length`, whether the pipeline takes the negative prompt;
- `setup(model_id)`: read the configs, refuse what the family does not support, set the latent
  normalisation (`latents_mean`, `latents_std`, `scaling_factor`) and `sigma_shift`, and return the
  `BackboneInfo` fields that differ (default size, multiples, image input, LoRA targets, extra);
- `forward`: the DiT call (timestep convention, packing, rotary positions, extra inputs);
- where the family differs from the default: `encode_prompt`, `fingerprint_configs`, `vae_decode`,
  `pipeline_kwargs`, `guidance_kwargs`, `clip_kwargs`, `image_pipeline`, `pipeline_for`; a family with another objective overrides
  `sample_sigmas`, `noisy` and `training_target` (hooks of `setseq.backbones.base.Backbone`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from setseq.backbones.base import (
    Backbone,
    BackboneInfo,
    architecture,
    check_image_input,
    load_diffusers_pipeline,
)
from setseq.data.cache import config_hash
from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm
from setseq.legacy import legacy_fingerprint
from setseq.memory import meta_diffusers
from setseq.offload import dits
from setseq.prompts import ImageCondition, PromptEmbeds


def fingerprint(configs: list[dict]) -> str:
    """Architecture identity: a hash of the component configs (LoRA compatibility, part of cache keys), less
    how they were loaded (`architecture`)."""
    return config_hash(architecture(configs), 16)


def plain_config(cfg) -> dict:
    """A diffusers config without its private keys (`_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def index_class_name(model_id: str) -> str | None:
    """The `_class_name` of a checkpoint's model_index.json (a hub id's read through diffusers: the hub cache, else
    a download of that one file); None when it cannot be read (the loader then says what is wrong). For a family
    whose `pipeline_for` picks or refuses by it."""
    index = Path(model_id) / "model_index.json"
    try:
        if index.is_file():
            name = json.loads(index.read_text()).get("_class_name")
        elif not Path(model_id).exists():
            # (heavy to import: loaded where used)
            from diffusers import DiffusionPipeline

            name = DiffusionPipeline.load_config(model_id).get("_class_name")
        else:
            name = None
    except Exception:  # unreadable or unreachable: from_pretrained reports it
        return None
    return name if isinstance(name, str) else None


class DiffusersBackbone(Backbone, declares_hooks=True):
    """A diffusers text-to-video pipeline behind the `Backbone` protocol; subclassed once per family."""

    name: ClassVar[str]  # registry name, `info.name`
    label: ClassVar[str]  # the family in messages: "Wan", "LTX-Video", ...
    pipeline_class: ClassVar[str]  # the diffusers pipeline class that loads the family's checkpoints
    vae_fp32: ClassVar[bool] = True  # keep the VAE in fp32 (the pipeline casts latents to the VAE's dtype)
    default_steps: ClassVar[int] = 50  # generation defaults: the pipeline's own
    default_guidance: ClassVar[float]
    negative_prompt: ClassVar[bool] = True  # whether generation hands the pipeline the negative prompt
    text_length: int  # max_sequence_length of the text encoder (class attribute, or set by `setup`)

    # Latent normalisation, set by `setup`: latents = (z - latents_mean) * scaling_factor / latents_std, with
    # z the VAE's posterior mean (None: that step is skipped). The inverse is what the pipeline does before
    # decoding. `latents_mean` / `latents_std`: (1, C, 1, 1, 1) float32 on the CPU.
    latents_mean: torch.Tensor | None = None
    latents_std: torch.Tensor | None = None
    scaling_factor: float = 1.0
    sigma_shift: float = 1.0  # flow matching: the time shift of the training sigmas (the scheduler's)

    def __init__(self, pipe, model_id: str, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.device = device
        self.dtype = dtype
        fields = self.setup(model_id)
        self.info = BackboneInfo(
            name=self.name,
            model_id=model_id,
            fingerprint=fingerprint(configs := self.fingerprint_configs()),
            supports_self_conditioning=False,
            legacy_fingerprint=legacy_fingerprint(configs, 16),
            **fields,
        )

    @classmethod
    def load(cls, model_id: str, device: torch.device, dtype: torch.dtype) -> DiffusersBackbone:
        """Load a diffusers-format checkpoint of the family (local folder or hub id). Only safetensors are read."""
        pipe = load_diffusers_pipeline(
            cls.pipeline_for(model_id), model_id, device, dtype, cls.label, vae_fp32=cls.vae_fp32
        )
        return cls(pipe, str(model_id), device, dtype)

    # -- per-family hooks ------------------------------------------------------------------------------------
    @classmethod
    def pipeline_for(cls, model_id: str) -> type:
        """The pipeline class that loads `model_id` (Wan picks its image-to-video one from model_index.json)."""
        # (heavy to import: loaded where used)
        import diffusers

        return getattr(diffusers, cls.pipeline_class)

    def setup(self, model_id: str) -> dict[str, Any]:
        """Read the configs, set the family's attributes; returns the `BackboneInfo` fields other than name,
        model_id, fingerprint and supports_self_conditioning."""
        raise NotImplementedError

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        """`predict` without self-conditioning: the DiT's output (B, C, f, h, w) in float32."""
        raise NotImplementedError

    def fingerprint_configs(self) -> list[dict]:
        """The configs the fingerprint hashes: DiT, VAE and text encoder (a family adds what else it has)."""
        tcfg, vcfg = self.transformer.config, self.vae.config
        return [plain_config(tcfg), plain_config(vcfg), self.text_encoder.config.to_dict()]

    def is_tiny(self, layers: int | None = None) -> bool:
        """A test-sized DiT (`setseq.tools.testing`), which defaults to a tiny video size instead of the family's
        native one. `layers`: its blocks, when they are not just `config.num_layers`."""
        c = self.transformer.config
        blocks = c.num_layers if layers is None else layers
        return blocks * c.num_attention_heads * c.attention_head_dim < 4096 * 8

    def meta_transformer(self) -> torch.nn.Module:
        return meta_diffusers(self.transformer)

    def enable_gradient_checkpointing(self) -> None:
        if not all(dit._supports_gradient_checkpointing for dit in dits(self.transformer)):
            super().enable_gradient_checkpointing()  # (refused)
        self.transformer.enable_gradient_checkpointing()

    def vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        """Un-normalised latents (B, C, f, h, w) in the VAE's dtype -> video (B, 3, F, H, W)."""
        return self.vae.decode(z, return_dict=False)[0]

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Arguments of the family's pipeline call beyond the common ones (LTX: frame rate)."""
        return {}

    def guidance_kwargs(self, guidance_scale: float) -> dict[str, Any]:
        """The pipeline-call arguments that set the guidance scale and the text length (HunyuanVideo 1.5's
        pipeline takes neither: its guider holds the scale)."""
        return {"guidance_scale": guidance_scale, "max_sequence_length": self.text_length}

    def clip_kwargs(self, frames: int, negative_prompt: str) -> dict[str, Any]:
        """The pipeline-call arguments for the clip length and the negative prompt (Sana Video's pipeline calls
        the first `frames` and wants "" for no negative prompt, not None)."""
        kwargs: dict[str, Any] = {"num_frames": frames}
        if self.negative_prompt:
            kwargs["negative_prompt"] = negative_prompt or None
        return kwargs

    def image_pipeline(self, image: np.ndarray) -> tuple[Any, dict[str, Any]]:
        """The pipeline and its extra arguments for image-to-video (a family whose `info.image` is not "none")."""
        raise NotImplementedError(f"{type(self).__name__} takes no first frame")

    # -- text ------------------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 token ids and attention mask (B, L) on the device, padded to `text_length`, the way the
        pipelines' `_get_t5_prompt_embeds` tokenise."""
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.text_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tok.input_ids.to(self.device), tok.attention_mask.to(self.device)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """T5 as the pipelines that do not mask it run it (LTX-Video's, ...): no mask to the encoder, its own
        output at pad positions; the mask marks the real tokens (for token masking)."""
        ids, mask = self.tokenize(prompts)
        hidden = self.text_encoder(ids)[0].float()  # (B, L, D)
        return PromptEmbeds(hidden, mask.bool())

    # -- video <-> latents -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        x = video.to(self.device, self.vae.dtype).permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W) -> (B, 3, F, H, W)
        z = self.vae.encode(x).latent_dist.mode().float()  # (B, C, f, h, w); the mean: deterministic caches
        if self.latents_mean is not None:
            z = z - self.latents_mean.to(z.device)
        z = z * self.scaling_factor
        return z if self.latents_std is None else z / self.latents_std.to(z.device)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float()
        if self.latents_std is not None:
            z = z * self.latents_std.to(z.device)
        z = z / self.scaling_factor
        if self.latents_mean is not None:
            z = z + self.latents_mean.to(z.device)
        x = self.vae_decode(z.to(self.vae.dtype))  # (B, 3, F, H, W)
        return x.float().clamp(-1, 1).permute(0, 2, 1, 3, 4)

    # -- diffusion -------------------------------------------------------------------------------------------
    def sample_sigmas(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        between: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """The schedulers sample in shifted time: training draws u uniformly and applies the family's shift.
        `between=(lo, hi)`: only sigmas in that range, distributed as the rest are there (one expert's range,
        `setseq.train.loop.step_expert`)."""
        return fm.sample_sigmas(
            batch,
            shift=self.sigma_shift,
            weighting="uniform",
            generator=generator,
            device=self.device,
            between=between,
        )

    def sigma_share(self, lo: float, hi: float) -> float:
        """The share of `sample_sigmas`' draws that fall in [lo, hi]."""
        return fm.sigma_share(lo, hi, shift=self.sigma_shift, weighting="uniform")

    def predict(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        self_cond: torch.Tensor | None = None,
        image: ImageCondition | None = None,
    ) -> torch.Tensor:
        if self_cond is not None:
            raise SetseqError(
                f"{self.label} has no self-conditioning input",
                "set regularizers.self_conditioning=0 for this backbone",
            )
        if self.info.image == "required":  # an image-to-video DiT: its forward takes the condition
            return self.forward(noisy, sigmas, prompt, image=image)  # type: ignore[call-arg]
        if image is not None:
            raise SetseqError(
                f"{self.info.model_id} takes no first-frame condition in training",
                "train on an image-to-video checkpoint (WanImageToVideoPipeline), or drop the image",
            )
        return self.forward(noisy, sigmas, prompt)

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
        image: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Text-to-video through the family's pipeline; (F, 3, H, W) in [-1, 1] on the CPU. `image`: the first
        frame, (H, W, 3) uint8 already at the video's size, for a model whose `info.image` is not "none"."""
        check_image_input(self.info, image is not None)
        pipe, extra = (self.pipe, {}) if image is None else self.image_pipeline(image)
        extra.update(self.clip_kwargs(frames or self.info.frames, negative_prompt))
        pipe.set_progress_bar_config(disable=not progress)
        out = pipe(
            prompt=prompt,
            height=height or self.info.height,
            width=width or self.info.width,
            num_inference_steps=steps or self.default_steps,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="pt",
            **self.guidance_kwargs(self.default_guidance if guidance_scale is None else guidance_scale),
            **self.pipeline_kwargs(),
            **extra,
        ).frames  # (B, F, 3, H, W) in [0, 1]
        return (out[0].float().cpu() * 2.0 - 1.0).clamp(-1, 1)
