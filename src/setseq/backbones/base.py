"""The one small interface that hides backbone differences, and the registry keyed by name.

A backbone owns the frozen pieces of a text-to-video model (text encoder, video codec, DiT) and the few
operations the Set-and-Sequence recipes need. Everything trainable lives in `setseq.lora`, injected into
`backbone.transformer`. Shapes: videos are `(B, F, 3, H, W)` in [-1, 1]; latents are `(B, C, f, h, w)`,
already normalised the way the DiT was trained on them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm
from setseq.prompts import ImageCondition, PromptEmbeds


@dataclass
class BackboneInfo:
    """Static facts about a backbone, used for validation, cache keys and defaults."""

    name: str  # registry name: "wan", "toy", ...
    model_id: str  # local folder or hub id it was loaded from
    fingerprint: str  # short hash of the model's configs: part of every cache key and LoRA metadata
    height: int  # default generation/training size
    width: int
    frames: int  # default clip length
    frame_multiple: int  # valid clip lengths are frame_multiple * k + 1 (4 for Wan's causal VAE)
    spatial_multiple: int  # height and width must be multiples of this (VAE stride * patch size)
    supports_self_conditioning: bool = False
    # Whether `generate(..., image=)` takes a first frame: "none" (text-to-video only), "optional" (one model
    # for both tasks: Wan 2.2 TI2V-5B), "required" (an image-to-video model: Wan 2.1 / 2.2 I2V).
    image: str = "none"
    # Module-name patterns (regex, matched with re.search on names inside `transformer`) of the linears that
    # carry LoRA by default: every linear of self-attention, cross-attention and FFN in the DiT blocks.
    lora_targets: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)
    # The same model's fingerprint as setseq computed it before 2026-12-02, over its configs as loaded (the
    # text encoder's folder path, transformers version and load dtype included): accepted in LoRA files and
    # resumed runs written then (`accepts`).
    legacy_fingerprint: str | None = None

    def accepts(self, fingerprint: str | None) -> bool:
        """Whether a LoRA's or cache's recorded fingerprint is this model's (None: not recorded)."""
        return fingerprint in (None, self.fingerprint, self.legacy_fingerprint)


# Keys of a saved config that say how it was loaded, not what the model is (with every private key, such as
# `_name_or_path`, the folder it was read from).
_LOAD_KEYS = ("transformers_version", "dtype", "torch_dtype")


def architecture(config: Any) -> Any:
    """A config (a dict, possibly nested) without what says where, by which library version or in which dtype
    it was loaded: private keys (`_name_or_path`, `_class_name`, `_diffusers_version`, ...), `transformers_version`,
    `dtype` / `torch_dtype`. What a fingerprint hashes, so that a moved model folder, a library upgrade or
    another `model.dtype` keep it."""
    if isinstance(config, dict):
        return {
            k: architecture(v)
            for k, v in config.items()
            if not str(k).startswith("_") and k not in _LOAD_KEYS
        }
    if isinstance(config, (list, tuple)):
        return [architecture(v) for v in config]
    return config


def config_hash(obj: Any, digits: int) -> str:
    """`digits` hex digits of the SHA-256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:digits]


@runtime_checkable
class Backbone(Protocol):
    """What a text-to-video backbone provides to the recipes. One implementation per model family."""

    info: BackboneInfo
    transformer: torch.nn.Module  # the DiT; LoRA layers are injected into its linears
    device: torch.device
    dtype: torch.dtype  # compute dtype of the frozen weights

    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """Encode prompts with the frozen text encoder."""
        ...

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> normalised latents (B, C, f, h, w). F == 1 gives a 1-frame latent."""
        ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, f, h, w) -> video (B, F, 3, H, W) in [-1, 1]."""
        ...

    def sample_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training noise levels (B,) in [0, 1), drawn the way the backbone was trained. For flow-matching
        backbones this is sigma itself; a backbone with its own objective (see `noisy_latents`) defines what
        it means (CogVideoX: the DDPM timestep t / num_train_timesteps)."""
        ...

    def predict(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        self_cond: torch.Tensor | None = None,
        image: ImageCondition | None = None,
    ) -> torch.Tensor:
        """The DiT's prediction for noisy latents at sigmas (B,), in the parameterisation of
        `training_target(backbone, ...)`: the flow-matching velocity noise - x0 unless the backbone says
        otherwise (CogVideoX: v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0). `image`: the first-frame
        condition of an image-to-video DiT (`info.image == "required"`, which also defines
        `image_condition(video) -> ImageCondition`); None there means no first frame (the condition dropped)."""
        ...

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
        """Text-to-video with classifier-free guidance. Returns (F, 3, H, W) in [-1, 1], on CPU.

        steps / guidance_scale None: the backbone's own defaults. A backbone whose `info.image` is not "none"
        also takes `image=`, the first frame as (H, W, 3) uint8 at the video's size (see `setseq.backbones.wan`)."""
        ...


def check_image_input(info: BackboneInfo, given: bool) -> None:
    """Refuse, in one line, a first frame for a text-to-video-only model and a missing one for an
    image-to-video model."""
    if given and info.image == "none":
        raise SetseqError(
            f"--image was given, but {info.model_id} is a text-to-video model (it takes no first frame)",
            "drop --image, or pass --model with an image-to-video checkpoint (a folder whose model_index.json "
            "names WanImageToVideoPipeline, or Wan 2.2 TI2V-5B)",
        )
    if not given and info.image == "required":
        raise SetseqError(
            f"{info.model_id} is an image-to-video model: it needs a first frame",
            "pass --image PATH (a PNG or JPEG), or use a text-to-video model",
        )


# The training objective. Flow matching (Wan, LTX, HunyuanVideo, toy) is the default; a backbone trained with
# another objective defines two optional methods with the same signature, and the recipes use these helpers:
#     noisy(x0, noise, sigmas) -> x_t            the forward process at the backbone's `sample_sigmas`
#     training_target(x0, noise, sigmas) -> y    what `predict` regresses onto (MSE)
# They are optional (not Protocol members) so that flow-matching backbones need not spell out the default.


# Several experts (Wan 2.2 A14B, whose DiT runs each sample on the expert of its noise level) add, optionally:
#     expert_sigmas: ((name, lowest, highest), ...)       each expert's range of sigmas (None: one DiT)
#     sigma_share(lo, hi) -> float                         the share of `sample_sigmas`' draws in [lo, hi]
#     sample_sigmas(batch, generator, between=(lo, hi))    draws within that range only, distributed as there
# Per-step expert routing (`setseq.train.loop.step_expert`, `model.expert_routing`) uses them.


def noisy_latents(
    backbone: Backbone, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """x_t for training: the backbone's own forward process if it has one, else the flow-matching interpolant."""
    own = getattr(backbone, "noisy", None)
    return own(x0, noise, sigmas) if own is not None else fm.interpolate(x0, noise, sigmas)


def training_target(
    backbone: Backbone, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor
) -> torch.Tensor:
    """The regression target of `predict`: the backbone's own if it has one, else the velocity noise - x0."""
    own = getattr(backbone, "training_target", None)
    return own(x0, noise, sigmas) if own is not None else fm.velocity_target(x0, noise)


_DIT_ON_META = contextvars.ContextVar("setseq_dit_on_meta", default=False)


@contextlib.contextmanager
def dit_on_meta(enabled: bool = True) -> Iterator[None]:
    """Within this block, `load_diffusers_pipeline` builds the DiT(s) (`transformer`, and `transformer_2` of
    Wan 2.2 A14B) from their configs with parameters on the meta device and reads none of their weights: the
    other processes of an FSDP2 run, which receive their shards from process 0 once sharded
    (`setseq.train.distributed.parallelize`), so a node holds one whole DiT in host memory, not one per
    process. Buffers are real; parameter dtypes are set from process 0's."""
    token = _DIT_ON_META.set(enabled)
    try:
        yield
    finally:
        _DIT_ON_META.reset(token)


def _empty_dits(pipeline_cls: type, model_id: str) -> dict[str, torch.nn.Module]:
    """The pipeline's DiT components, built from their configs with parameters on the meta device."""
    import diffusers
    from accelerate import init_empty_weights

    index = pipeline_cls.load_config(model_id)
    dits = {}
    for name in ("transformer", "transformer_2"):
        entry = index.get(name) or (None, None)
        if entry[1] is None:
            continue
        cls = getattr(diffusers, entry[1])
        with init_empty_weights(include_buffers=False):
            dits[name] = cls.from_config(cls.load_config(model_id, subfolder=name))
    return dits


def load_diffusers_pipeline(
    pipeline_cls: type,
    model_id: str,
    device: torch.device,
    dtype: torch.dtype,
    family: str,
    *,
    vae_fp32: bool,
):
    """`pipeline_cls.from_pretrained` on a local folder or hub id, safetensors only, every component frozen
    and in eval mode on `device`. `vae_fp32` keeps the VAE in fp32 for families whose pipeline casts latents to
    the VAE's dtype before decoding. Inside `dit_on_meta`, the DiT's weights are not read (its parameters are
    on the meta device). Failures become one-line errors that name the fix."""
    import os
    import warnings
    from pathlib import Path

    local = Path(model_id)
    if local.exists() and not (local / "model_index.json").is_file():
        raise SetseqError(
            f"{model_id} is not a diffusers {family} checkpoint (no model_index.json)",
            "point --model at the folder that holds model_index.json and the pipeline's component folders",
        )
    try:
        with warnings.catch_warnings():  # diffusers >= 0.42 renames torch_dtype; older releases only know it
            warnings.simplefilter("ignore", FutureWarning)
            empty = _empty_dits(pipeline_cls, model_id) if _DIT_ON_META.get() else {}
            skip = dict.fromkeys(empty)  # None: from_pretrained leaves the component out
            pipe = pipeline_cls.from_pretrained(model_id, torch_dtype=dtype, use_safetensors=True, **skip)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (
            "download it first (hf download <id> --local-dir DIR) and pass the folder"
            if not local.exists()
            else f"check that the folder is a complete diffusers {family} checkpoint with safetensors weights"
        )
        raise SetseqError(f"cannot load {family} model '{model_id}': {first}", hint) from None
    if vae_fp32 and dtype != torch.float32:
        pipe.vae.to(torch.float32)
    pipe.to(device)
    if empty:
        pipe.register_modules(**empty)  # after `to`: meta parameters cannot be copied anywhere
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.requires_grad_(False)
            m.eval()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return pipe


BackboneLoader = Callable[[str, torch.device, torch.dtype], Backbone]
_REGISTRY: dict[str, BackboneLoader] = {}


def register_backbone(name: str) -> Callable[[BackboneLoader], BackboneLoader]:
    """Decorator: register a loader `(model_id, device, dtype) -> Backbone` under `name`."""

    def deco(fn: BackboneLoader) -> BackboneLoader:
        _REGISTRY[name] = fn
        return fn

    return deco


def registered_loaders() -> dict[str, BackboneLoader]:
    """The loaders registered so far, by name (see `setseq.backbones.registry` for the built-in families)."""
    return dict(_REGISTRY)
