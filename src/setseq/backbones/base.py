"""The one small interface that hides backbone differences, and the registry keyed by name.

A backbone owns the frozen pieces of a text-to-video model (text encoder, video codec, DiT) and the few
operations the Set-and-Sequence recipes need. Everything trainable lives in `setseq.lora`, injected into
`backbone.transformer`. Shapes: videos are `(B, F, 3, H, W)` in [-1, 1]; latents are `(B, C, f, h, w)`,
already normalised the way the DiT was trained on them.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm
from setseq.prompts import ImageCondition, PromptEmbeds


@dataclass(frozen=True)
class CrossAttention:
    """Where a DiT's video tokens attend to the text tokens apart from each other (`Backbone.cross_attention`),
    what the attention loss reads (`setseq.train.attention`)."""

    # Attention modules whose query is the video tokens and key the text tokens: each applies `norm_q` to the
    # query (B, N, heads * d) and `norm_k` to the key (B, L, heads * d), then softmax(q k^T / sqrt(d)) over the
    # L text tokens with no mask (diffusers' `WanAttention` as `attn2`).
    layers: tuple[torch.nn.Module, ...]
    # (frames, height, width) latent cells per video token; the N tokens run over (f, h, w), w fastest.
    patch: tuple[int, int, int]


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


class Backbone:
    """What a text-to-video backbone provides to training, generation, memory planning and export: one subclass
    per model family (`setseq.backbones.diffusers_backbone.DiffusersBackbone` for diffusers pipelines). Every
    hook the package calls is declared here, with its default; nothing is probed with `getattr`. A family
    overrides the hooks that differ; a public name a family defines that no base declares (a misspelt hook,
    which would silently fall back to the default) is refused when the class is made (`__init_subclass__`).
    A family's own helpers start with `_`; public methods of its own that no caller reaches through the
    protocol are listed (`class ToyBackbone(Backbone, own=("generate_batch",))`). A shared base that declares
    more hooks says so: `class DiffusersBackbone(Backbone, declares_hooks=True)`."""

    info: BackboneInfo
    transformer: torch.nn.Module  # the DiT; LoRA layers are injected into its linears
    device: torch.device
    dtype: torch.dtype  # compute dtype of the frozen weights
    # The frozen text encoder and its tokenizer (token embeddings train through them: `train.embeddings`) and
    # the video codec (its bytes count in the memory estimate); None where a family has none.
    text_encoder: torch.nn.Module | None = None
    tokenizer: Any = None
    vae: torch.nn.Module | None = None
    # Several experts (Wan 2.2 A14B, whose DiT runs each sample on the expert of its noise level): each
    # expert's (name, lowest sigma, highest sigma); None: one DiT. Per-step expert routing
    # (`setseq.train.loop.step_expert`, `model.expert_routing`) uses it with `sigma_share` and `sample_sigmas`.
    expert_sigmas: tuple[tuple[str, float, float], ...] | None = None

    def __init_subclass__(
        cls, declares_hooks: bool = False, own: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if declares_hooks:
            return
        declared = {
            n for base in cls.__mro__[1:] for n in (*vars(base), *vars(base).get("__annotations__", {}))
        }
        for name in vars(cls):
            if name.startswith("_") or name in declared or name in own:
                continue
            near = difflib.get_close_matches(name, sorted(n for n in declared if not n.startswith("_")), 1)
            raise TypeError(
                f"{cls.__name__}.{name} is not a hook of the backbone protocol"
                + (f" (did you mean {near[0]!r}?)" if near else "")
                + f": declare it in {cls.__mro__[1].__name__} with its default, or name a helper of the family "
                f"_{name}"
            )

    # -- required: what every family implements -----------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        """Encode prompts with the frozen text encoder."""
        raise NotImplementedError

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> normalised latents (B, C, f, h, w). F == 1 gives a 1-frame latent."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, f, h, w) -> video (B, F, 3, H, W) in [-1, 1]."""
        raise NotImplementedError

    def sample_sigmas(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        between: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """Training noise levels (B,) in [0, 1), drawn the way the backbone was trained. For flow-matching
        backbones this is sigma itself; a backbone with its own objective (`noisy`, `training_target`) defines
        what it means (CogVideoX: the DDPM timestep t / num_train_timesteps). `between=(lo, hi)`: only sigmas
        in that range, distributed as the rest are there (one expert's, `expert_sigmas`)."""
        raise NotImplementedError

    def predict(
        self,
        noisy: torch.Tensor,
        sigmas: torch.Tensor,
        prompt: PromptEmbeds,
        self_cond: torch.Tensor | None = None,
        image: ImageCondition | None = None,
    ) -> torch.Tensor:
        """The DiT's prediction for noisy latents at sigmas (B,), in the parameterisation of `training_target`.
        `image`: the first-frame condition of an image-to-video DiT (`info.image == "required"`); None there
        means no first frame (the condition dropped)."""
        raise NotImplementedError

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
        """Text-to-video with classifier-free guidance. Returns (F, 3, H, W) in [-1, 1], on CPU. steps /
        guidance_scale None: the backbone's own defaults. `image`: the first frame, (H, W, 3) uint8 at the
        video's size, for a backbone whose `info.image` is not "none" (`check_image_input` refuses it else)."""
        raise NotImplementedError

    # -- hooks with defaults ---------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (B, L) on the device, as `encode_prompt` tokenises."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its tokenisation")

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """x_t for training at the backbone's `sample_sigmas`: the flow-matching interpolant by default (Wan,
        LTX, HunyuanVideo, toy); a family trained otherwise overrides it with `training_target`."""
        return fm.interpolate(x0, noise, sigmas)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """What `predict` regresses onto (MSE): the flow-matching velocity noise - x0 by default."""
        return fm.velocity_target(x0, noise)

    def sigma_share(self, lo: float, hi: float) -> float:
        """The share of `sample_sigmas`' draws that fall in [lo, hi] (a backbone of experts: see
        `expert_sigmas`); by default the draws are uniform."""
        return max(0.0, min(hi, 1.0) - max(lo, 0.0))

    def image_condition(self, video: torch.Tensor) -> ImageCondition:
        """The first-frame condition of a clip (B, F, 3, H, W) for an image-to-video DiT (`info.image` is
        "required"), cached with the latents."""
        raise NotImplementedError(f"{type(self).__name__} takes no first-frame condition")

    def dropped_condition(self, noisy: torch.Tensor) -> ImageCondition:
        """The condition of no first frame, for noisy latents (B, C, f, h, w) of an image-to-video DiT."""
        raise NotImplementedError(f"{type(self).__name__} takes no first-frame condition")

    def text_embeddings(self) -> torch.nn.Embedding | None:
        """The text encoder's input embedding table (token embeddings train offsets of its rows,
        `setseq.train.embeddings`); None where the backbone has no text encoder and tokenizer to train through."""
        if self.text_encoder is None or self.tokenizer is None:
            return None
        return self.text_encoder.get_input_embeddings()  # (a transformers model)

    def cross_attention(self) -> CrossAttention | None:
        """The DiT's cross-attention layers (`CrossAttention`); None where its video and text tokens attend
        jointly (CogVideoX, HunyuanVideo, ...), so that no layer holds a map of the text tokens alone."""
        return None

    def token_positions(self, text: str, word: str) -> list[int]:
        """The positions of `encode_prompt([text])`'s tokens that spell `word` wherever it stands in `text` as
        a word (several where the tokenizer splits it, as T5's does "sks"). By default from the tokenizer's
        character offsets (a Hugging Face fast tokenizer, as `tokenize` calls it)."""
        if self.tokenizer is None or not self.tokenizer.is_fast:
            raise SetseqError(
                f"the {self.info.name} backbone has no fast tokenizer to find {word!r} in its prompts",
                "set stage1.attention_loss=0 and stage2.attention_loss=0",
            )
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True, truncation=True)
        spans = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text)]
        return [
            i
            for i, (a, b) in enumerate(enc["offset_mapping"])
            if b > a and any(a < end and b > start for start, end in spans)
        ]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each DiT block's activations in backward (`train.gradient_checkpointing`); refused in one
        line where the DiT cannot."""
        raise SetseqError(
            f"the {self.info.name} DiT does not support gradient checkpointing",
            "set train.gradient_checkpointing=false",
        )

    def meta_transformer(self) -> torch.nn.Module:
        """The same DiT (class and config) on the meta device, without weights: what the memory estimate
        traces (`setseq.memory.meta_copy`)."""
        raise SetseqError(
            f"cannot estimate memory for {type(self.transformer).__name__}: it is not a diffusers model",
            "set train.memory_check=false",
        )


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
    # (heavy to import: loaded where used)
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


@dataclass(frozen=True)
class BenchShape:
    """A real DiT architecture of a family, for `setseq bench --shape NAME` (`setseq.tools.speed`): its diffusers
    class and config, and its text inputs. Built with random weights, no download."""

    family: str
    cls: str  # the diffusers DiT class
    config: dict[str, Any]
    latent_channels: int
    text_len: int
    text_dim: int
    pooled_dim: int | None = None
    layer_keys: tuple[str, ...] = ("num_layers",)  # the config keys `--layers` sets
    note: str = ""


@dataclass(frozen=True)
class TinyModel:
    """A tiny random model of a family, built from config (no download): a row of the shared backbone test
    table (`tests/test_backbones.py`), and what the bench builds its real-size DiT's pipeline around."""

    name: str  # the table row's id
    build: Callable[..., Any]  # (folder, seed=0, **kw) -> the folder, in the family's checkpoint layout
    pipeline: str  # the diffusers pipeline class that must load the exported LoRA
    frames: int
    size: tuple[int, int]  # (height, width) trained at
    lora_modules: int  # the linears that carry LoRA by default
    # False where diffusers gives the pipeline no LoRA loader (the DiT's `load_lora_adapter` is used instead)
    pipeline_loads_lora: bool = True


@dataclass(frozen=True)
class Family:
    """Everything the package knows of one model family, defined in the family's own file as `FAMILY` and
    listed by one line of `setseq.backbones.registry.BUILTIN` (or `registry.register(FAMILY)`)."""

    name: str  # registry name, `--backbone`
    load: BackboneLoader
    # model_index.json `_class_name`s of the family's checkpoints (`registry.guess_backbone`)
    pipelines: tuple[str, ...] = ()
    # A diffusers module name -> (ComfyUI's module name, its slot in a weight ComfyUI fuses); None: setseq
    # writes no ComfyUI layout for the family (`setseq.export.comfyui_layout`)
    comfyui: Callable[[str], tuple[str, int]] | None = None
    comfyui_fused: dict[str, int] = field(default_factory=dict)  # fused ComfyUI linear (suffix) -> parts
    # (ComfyUI module name, lora_B (out, r) in diffusers' row order) -> lora_B in ComfyUI's row order, where the
    # two order a weight's rows differently (MiniMax H3's fc1: [gate; value]); None: the same order
    comfyui_rows: Callable[[str, torch.Tensor], torch.Tensor] | None = None
    experts: tuple[str, ...] = ()  # module-name prefixes of a LoRA over several experts (Wan 2.2 A14B)
    # The frame rate its videos play at when nothing else says (a base model alone, a run from before runs
    # recorded theirs): its model card's or diffusers' export example's
    fps: float = 16.0
    shapes: dict[str, BenchShape] = field(default_factory=dict)  # `setseq bench --shape` names
    tiny: tuple[TinyModel, ...] = ()
    # The class the bench wraps around a real-size DiT: cls(pipe, model_id, device, dtype) (a diffusers family)
    backbone: type | None = None
