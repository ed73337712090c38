"""MiniMax H3 text-to-video through diffusers' modular pipeline (`MiniMaxH3ModularPipeline`, workflow `t2va`;
`MiniMaxH3Transformer3DModel`, `AutoencoderKLMiniMaxH3`, `AutoencoderKLMiniMaxH3Audio`), e.g. `MiniMaxAI/MiniMax-H3`
(33B). **Video only**: no LoRA on the audio head and tail, no audio rows in training; generation writes no audio.

- Checkpoint: modular only. The folder holds `modular_model_index.json` (no `model_index.json`), whose
  `_class_name` is `MiniMaxH3ModularPipeline`; it loads with `ModularPipeline.from_pretrained(folder,
  workflow="t2va")` and `load_components` (`_load_pipeline`). A local copy's index points each component at the
  hub, and diffusers reads a component from the folder only when its subfolder is there, so every component
  t2va needs is checked to be present first (no silent download). The `ref2va` partition (`transformer_ref/`) is
  never loaded. `processor` (Qwen3-VL's, which needs torchvision) is optional: t2va uses only its
  `create_mm_token_type_ids`, which `_TokenTypes` provides where the folder has no processor (the tiny model).
- The DiT: one stack of blocks over one packed sequence `[text | audio | video]`, full self-attention, no
  cross-attention, no attention mask, no padding. The rows are laid out by the pipeline's own
  `MiniMaxH3PrepareLayoutStep.build_packed_sequence` (rotary positions, modality tags) and
  `patchify_video_latents`, with zero audio rows.
- Time and objective: the DiT takes t = 1 - sigma in [0, 1] (t = 1 clean) and predicts the data-ward velocity
  x0 - noise (`MiniMaxH3Scheduler`: x_t = t x0 + (1 - t) noise, x0 = x_t + sigma v). `predict` returns its
  negation, noise - x0, so the default flow-matching `noisy` / `training_target` hold and every caller of
  `predict` (self-conditioning's x0 estimate, the background target) reads it as for any other family. Training
  sigmas: u uniform, then the scheduler's video shift 12.
- One timestep per forward: the DiT's timestep table and row layout are shared by the whole batch, and prompts of
  different lengths cannot share a forward (no mask: padding would be attended and would move the media rows'
  rotary clock, which starts after the text). So `forward` runs the DiT once per sample, each at its own sigma
  with its own prompt rows. This keeps the recipe's per-sample sigma draws (the loss is the same estimator as for
  every other family, no protocol change), and costs little: at the published size one 124-frame sample is
  ~37k rows, which fills a GPU alone; the activations of a micro-batch are held until backward either way.
- Text: Qwen3-VL's `hidden_states[50]`, the prompt verbatim without special tokens or template, one prompt per
  call, through the pipeline's own `get_qwen3vl_prompt_embeds`. `PromptEmbeds` pads a batch with zero rows and
  marks the real tokens; `forward` keeps only the marked rows of each sample, so padding and the tokens token
  masking drops are removed (as if not in the prompt), not zeroed and still attended. No negative prompt, no
  guidance: the checkpoint is guidance-distilled (one forward per sampling step).
- Audio: the only audio-only weights of the DiT are `audio_proj_in` and `audio_proj_out`; every block is shared
  by text, video and audio rows. Training runs with no audio rows (LTX-2's video-only mode; Lightricks'
  `with_audio: false`), so those two and the audio VAE are bit-identical after training and get no gradient, and the LoRA sits on no audio-only module. **But the LoRA's blocks are shared**: at
  generation the pipeline denoises a soundtrack beside the video through the same LoRA-carrying attention and
  FFN, so the soundtrack changes with the LoRA, while the base model's stays as it was (both shown by
  `tests/test_backbones.py::test_minimax_h3_trains_video_only`). Generation keeps the video only.
- Latents: pixels ImageNet-normalised over [0, 1]; the VAE posterior mean, then (z - latents_mean) / latents_std
  per channel (24 channels), no scaling factor; 16x in space (sides multiples of 32 with the 2x2 patch). Time:
  clips of 17n + 5 frames give 5n + 2 latent frames (22 -> 7); one frame gives one latent frame (stage 1). The
  base protocol's `frame_multiple * k + 1` rule cannot state 17n + 5, so `info.frame_multiple` is 1 and
  `encode_video` refuses other lengths in one line. Generation: 5 to 15 s at 24 fps, i.e. 124 to 362 frames of
  the form 17n + 5; `generate` makes the shortest such clip that holds the frames asked and keeps those (a
  run's samples and prior videos at the training clip's length), with a note.
- LoRA targets: the shared blocks' attention `transformer_blocks.N.attn.{to_q,to_k,to_v,to_out.0}` and SwiGLU
  FFN `ff.net.{0.proj,2}`. Not the text refiner (`token_refiner`), the modulation table (`adaln_proj`), the
  embedders or the heads.
- ComfyUI (`comfy/ldm/minimax/model.py`) uses the original checkpoint's names: `blocks.N.attn.qkv_proj` (q, k, v
  fused row-wise), `attn.out_proj`, `mlp.fc1` (SwiGLU halves as [gate; value], where diffusers' `ff.net.0.proj`
  holds [value; gate]: `comfyui_rows` swaps the halves of lora_B) and `mlp.fc2`; checked offline through
  diffusers' own converter of that layout (`test_minimax_h3_trains_video_only`).
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from setseq.backbones.base import (
    _DIT_ON_META,
    BenchShape,
    Family,
    TinyModel,
    _empty_dits,
    check_image_input,
)
from setseq.backbones.diffusers_backbone import DiffusersBackbone, plain_config
from setseq.backbones.tiny import TINY_WORDS, build_word_tokenizer
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds

PIPELINE = "MiniMaxH3ModularPipeline"
WORKFLOW = "t2va"
# What t2va loads (`processor` optional: see `_TokenTypes`)
COMPONENTS = ("transformer", "vae", "audio_vae", "text_encoder", "tokenizer", "scheduler", "audio_scheduler")
FPS = 24.0  # the model's fixed frame rate
PIXEL_MEAN, PIXEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet: the video VAE's pixel space
# the VAE's clip_length / tokens_chunk_size: 17n + 5 frames -> 5n + 2 latent frames
CHUNK_FRAMES, CHUNK_LATENTS = 17, 5
MIN_FRAMES, MAX_FRAMES = 124, 362  # generation: 5 to 15 s at 24 fps, aligned to 17n + 5
VIDEO_TAG, TEXT_TAG, AUDIO_TAG = 0, 1, 2  # the DiT's per-row modality tags (its AdaLN table rows)
LORA_TARGETS = (
    r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)$",
    r"^transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$",
)
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def aligned_frames(frames: int) -> int:
    """The smallest clip length of the form 17n + 5 at or above `frames`."""
    return frames + (CHUNK_LATENTS - frames) % CHUNK_FRAMES


class _TokenTypes:
    """What t2va calls of Qwen3-VL's processor, `create_mm_token_type_ids` (0 text, 1 image pad, 2 video pad, as
    transformers' `ProcessorMixin`): the stand-in where a folder has no processor (it needs torchvision)."""

    def __init__(self, tokenizer) -> None:
        self.types = {tokenizer.convert_tokens_to_ids(VISION_TOKENS[0]): 1}
        self.types[tokenizer.convert_tokens_to_ids(VISION_TOKENS[1])] = 2

    def create_mm_token_type_ids(self, input_ids: list) -> list[list[int]]:
        return [[self.types.get(int(i), 0) for i in ids] for ids in input_ids]


class _ModularLoader:
    """`pipeline_for`'s answer: a class whose `from_pretrained(folder, transformer=None, ...)` loads the t2va
    modular pipeline (what `setseq bench` calls with a real-size DiT in place of the folder's)."""

    @staticmethod
    def from_pretrained(model_id: str, transformer: Any = None, torch_dtype=torch.float32, **_: Any):
        return _load_pipeline(str(model_id), torch_dtype, transformer=transformer)


def _read_index(model_id: str) -> dict | None:
    """The local folder's modular_model_index.json (None for a hub id); refuses what is not an H3 checkpoint."""
    local = Path(model_id)
    if not local.exists():
        return None
    index = local / "modular_model_index.json"
    if not index.is_file():
        has = " (it holds a model_index.json)" if (local / "model_index.json").is_file() else ""
        raise SetseqError(
            f"{model_id} is not a MiniMax H3 checkpoint: no modular_model_index.json{has}",
            "point --model at the folder of MiniMaxAI/MiniMax-H3 (hf download MiniMaxAI/MiniMax-H3 --local-dir "
            "DIR), or name its own family with --backbone",
        )
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise SetseqError(f"cannot read {index}: {exc}", "download the checkpoint again") from None
    cls = data.get("_class_name") if isinstance(data, dict) else None
    if cls != PIPELINE:
        raise SetseqError(
            f"{model_id} holds a {str(cls)[:80]!r} pipeline, not MiniMax H3's text-to-video {PIPELINE}",
            f"use a checkpoint whose modular_model_index.json names {PIPELINE} (MiniMaxAI/MiniMax-H3)",
        )
    missing = [c for c in COMPONENTS if not (local / c).is_dir()]
    if missing:
        raise SetseqError(
            f"{model_id} lacks the component folder(s) {', '.join(missing)} that MiniMax H3's t2va needs",
            "download the whole checkpoint (hf download MiniMaxAI/MiniMax-H3 --local-dir DIR) and pass DIR",
        )
    return data


def _load_pipeline(model_id: str, dtype: torch.dtype, transformer: Any = None, load_dit: bool = True):
    """The t2va modular pipeline of a local folder or hub id, its components loaded in `dtype` (the DiT too:
    its fp32 heads stay fp32, `_keep_in_fp32_modules`); `transformer`: a DiT to use instead of the folder's;
    `load_dit=False`: none (the caller sets one)."""
    # (heavy to import: loaded where used)
    from diffusers import ModularPipeline

    index = _read_index(model_id)
    load_dit = load_dit and transformer is None
    names = [c for c in COMPONENTS if c != "transformer" or load_dit]
    if index is None or (Path(model_id) / "processor").is_dir():
        names.append("processor")
    try:
        with warnings.catch_warnings():  # diffusers 0.42 renames torch_dtype; older releases only know it
            warnings.simplefilter("ignore", FutureWarning)
            # (the index holds no weights; the components load from safetensors only, no remote code)
            pipe = ModularPipeline.from_pretrained(
                model_id, workflow=WORKFLOW, trust_remote_code=False, use_safetensors=True
            )
            pipe.load_components(names=names, torch_dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SetseqError(
            f"cannot load MiniMax H3 model '{model_id}': {first}",
            "download it first (hf download MiniMaxAI/MiniMax-H3 --local-dir DIR) and pass the folder",
        ) from None
    if type(pipe).__name__ != PIPELINE:
        raise SetseqError(
            f"{model_id} loads as {type(pipe).__name__}, not {PIPELINE}", "use a MiniMax H3 checkpoint"
        )
    if transformer is not None:
        pipe.update_components(transformer=transformer)
    failed = [c for c in names if getattr(pipe, c, None) is None]  # load_components only warns
    if failed:
        raise SetseqError(
            f"cannot load the {', '.join(failed)} of MiniMax H3 model '{model_id}' (diffusers logged why above)",
            "check that the folder is a complete MiniMax H3 checkpoint with safetensors weights",
        )
    if getattr(pipe, "processor", None) is None:
        pipe.update_components(processor=_TokenTypes(pipe.tokenizer))
    return pipe


class MiniMaxH3Backbone(DiffusersBackbone):
    """MiniMax H3 T2V behind the `Backbone` protocol, video only."""

    name, label, pipeline_class = "minimax-h3", "MiniMax H3", PIPELINE
    vae_fp32 = False  # (not used: `load` is this family's own)
    default_steps, default_guidance = 50, 1.0  # the blocks' default; guidance-distilled (no CFG)
    negative_prompt = False
    text_length = 0  # no fixed text length: each prompt is its own tokens

    @classmethod
    def load(cls, model_id: str, device: torch.device, dtype: torch.dtype) -> MiniMaxH3Backbone:
        # (heavy to import: loaded where used)
        from diffusers import MiniMaxH3ModularPipeline

        # In `dit_on_meta`, the DiT is built from its config with parameters on the meta device, set after `to`.
        empty = _empty_dits(MiniMaxH3ModularPipeline, model_id) if _DIT_ON_META.get() else {}
        # (the VAE keeps its own fp32 modules, as diffusers loads it)
        pipe = _load_pipeline(str(model_id), dtype, load_dit=not empty)
        pipe.to(device)
        if empty:
            pipe.update_components(transformer=empty["transformer"])
        for m in pipe.components.values():
            if isinstance(m, torch.nn.Module):
                m.requires_grad_(False)
                m.eval()
        return cls(pipe, str(model_id), device, dtype)

    @classmethod
    def pipeline_for(cls, model_id: str) -> type:
        return _ModularLoader

    def setup(self, model_id: str) -> dict[str, Any]:
        tcfg, vcfg = self.transformer.config, self.vae.config
        # No `tokenizer` for textual inversion (`setseq.train.embeddings` refuses it): the DiT reads Qwen3-VL's
        # 50th hidden state through the pipeline's own helper.
        self.tokenizer = None
        self.latents_mean = torch.tensor(vcfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(vcfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.sigma_shift = float(self.pipe.scheduler.config.get("shift", 12.0))
        self.patch = tuple(int(p) for p in tcfg.patch_size)
        spatial = int(self.vae.spatial_compression_ratio) * self.patch[2]
        if (int(vcfg.clip_length), int(self.vae.tokens_chunk_size)) != (CHUNK_FRAMES, CHUNK_LATENTS):
            raise SetseqError(
                f"{model_id}'s video VAE chunks {vcfg.clip_length} frames, not MiniMax H3's {CHUNK_FRAMES}",
                "use the released MiniMax H3 VAE",
            )
        height, width = (32, 32) if self.is_tiny() else (768, 1344)  # the pipeline's default 16:9 canvas
        return dict(
            height=height,
            width=width,
            frames=MIN_FRAMES,
            frame_multiple=1,  # 17n + 5 (or 1): checked by `encode_video` and `generate`
            spatial_multiple=spatial,
            lora_targets=LORA_TARGETS,
            extra={
                "flow_shift": self.sigma_shift,
                "frames": "17n+5 (training: 22 or more; generation: 124 to 362)",
                "audio": "frozen, no LoRA, no audio rows in training; the shared blocks' LoRA also changes the "
                "soundtrack the pipeline generates beside the video, which setseq drops",
            },
        )

    def fingerprint_configs(self) -> list[dict]:
        return super().fingerprint_configs() + [plain_config(self.pipe.audio_vae.config)]

    # -- text ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds:
        # (heavy to import: loaded where used)
        from diffusers.modular_pipelines.minimax_h3.encoders import get_qwen3vl_prompt_embeds

        rows = []
        for prompt in prompts:
            ids = self.pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if not ids:
                raise SetseqError(
                    "MiniMax H3 needs a non-empty prompt", "give every prompt at least one word"
                )
            rows.append(
                get_qwen3vl_prompt_embeds(
                    self.text_encoder, self.pipe.processor, ids, {}, self.pipe.text_encoder_layer,
                    device=self.device, dtype=torch.float32,
                )[0]
            )  # fmt: skip
        n = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), n, rows[0].shape[-1], device=self.device)
        mask = torch.zeros(len(rows), n, dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            embeds[i, : len(r)], mask[i, : len(r)] = r, True
        return PromptEmbeds(embeds, mask)  # (B, L, D) zero-padded, (B, L) the real tokens

    # -- video <-> latents -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        frames = video.shape[1]
        if frames != 1 and frames % CHUNK_FRAMES != CHUNK_LATENTS:
            fit = aligned_frames(frames)
            raise SetseqError(
                f"MiniMax H3's VAE takes clips of 17n+5 frames (22, 39, 56, ...), not {frames}",
                f"use --frames {fit}" + (f" or {fit - CHUNK_FRAMES}" if fit - CHUNK_FRAMES >= 22 else ""),
            )
        mean = torch.tensor(PIXEL_MEAN, device=self.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(PIXEL_STD, device=self.device).view(1, -1, 1, 1, 1)
        x = video.to(self.device, torch.float32).permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W) in [-1, 1]
        x = (((x + 1.0) / 2.0 - mean) / std).to(self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode().float()  # (B, C, f, h, w); the mean: deterministic caches
        return (z - self.latents_mean.to(z.device)) / self.latents_std.to(z.device)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() * self.latents_std.to(latents.device) + self.latents_mean.to(latents.device)
        x = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float()  # (B, 3, F, H, W)
        mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(PIXEL_STD, device=x.device).view(1, -1, 1, 1, 1)
        x = (x * std + mean).clamp(0, 1) * 2.0 - 1.0
        return x.permute(0, 2, 1, 3, 4)

    # -- diffusion -------------------------------------------------------------------------------------------
    def _layout(self, n_text: int, f: int, h: int, w: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The DiT's description of one packed `[text | video]` sequence (no audio rows), by the pipeline's own
        layout function."""
        # (heavy to import: loaded where used)
        from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep

        pos, tags, video, audio, text, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
            torch.full((n_text,), TEXT_TAG), f, h, w, 0, self.patch, 2, AUDIO_TAG, VIDEO_TAG
        )
        fields = dict(token_tags=tags, video_indices=video, audio_indices=audio, text_indices=text)
        out = {k: v.to(device) for k, v in fields.items()}
        out["position_ids"] = pos.to(device, torch.float32)  # (the DiT's rope casts to fp32)
        return out

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        """One DiT call per sample (its own timestep and prompt rows); returns the DiT's output negated: the
        velocity noise - x0, (B, C, f, h, w) float32."""
        # (heavy to import: loaded where used)
        from diffusers.modular_pipelines.minimax_h3.before_denoise import patchify_video_latents

        b, c, f, h, w = noisy.shape
        pt, ph, pw = self.patch
        x = noisy.to(self.device, self.dtype)
        embeds, mask = prompt.embeds.to(self.device, self.dtype), prompt.mask.to(self.device)
        audio = torch.zeros(
            1, 0, int(self.transformer.config.audio_in_channels), device=self.device, dtype=self.dtype
        )
        outs = []
        for i in range(b):
            text = embeds[i : i + 1] if mask.is_meta else embeds[i : i + 1, mask[i]]  # the kept tokens only
            layout = self._layout(text.shape[1], f, h, w, self.device)
            t = (1.0 - sigmas[i : i + 1].to(self.device).float()).clamp(0.0, 1.0)  # (1,) t = 1 - sigma
            rows = patchify_video_latents(x[i : i + 1], self.patch)[None]  # (1, N, C * pt * ph * pw)
            video, _ = self.transformer(
                hidden_states=rows,
                audio_hidden_states=audio,
                encoder_hidden_states=text,
                timestep=t,
                timestep_indices=torch.zeros_like(layout["token_tags"]),  # every row at the one timestep
                return_dict=False,
                **layout,
            )
            out = video.reshape(1, f // pt, h // ph, w // pw, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
            outs.append(out.reshape(1, c, f, h, w))
        return -torch.cat(outs).float()  # the DiT predicts x0 - noise

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
        """Text-to-video through the t2va modular pipeline (which also denoises a soundtrack, dropped here);
        (F, 3, H, W) in [-1, 1] on the CPU. The model makes 5 to 15 s clips of 17n + 5 frames: `frames` it
        cannot make (a training clip's 22 or 39, for a run's sample videos, its prior videos or `setseq
        generate` on the run's clip length) are the first frames of the shortest clip it makes that holds
        them, with a note on stderr."""
        check_image_input(self.info, image is not None)
        want = frames or self.info.frames
        make = _clip_to_make(want, negative_prompt, guidance_scale)
        if make != want:
            print(
                f"note: MiniMax H3 makes {MIN_FRAMES} to {MAX_FRAMES} frames of the form 17n+5: making {make} "
                f"and keeping the first {want}",
                file=sys.stderr,
            )
        self.pipe.set_progress_bar_config(disable=not progress)
        out = self.pipe(
            prompt=prompt,
            height=height or self.info.height,
            width=width or self.info.width,
            num_frames=make,
            num_inference_steps=steps or self.default_steps,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="pt",
            output="videos",
        )  # (1, F, 3, H, W) in [0, 1]
        video = out[0] if isinstance(out, (list, tuple)) else out
        return (video[0, :want].float().cpu() * 2.0 - 1.0).clamp(-1, 1)


def _clip_to_make(frames: int, negative_prompt: str, guidance_scale: float | None) -> int:
    """The clip length to generate for `frames` (the shortest of 17n + 5 frames, 124 to 362, that holds them);
    refuses, in one line, what the guidance-distilled, 5-15 s model cannot make."""
    if negative_prompt:
        raise SetseqError(
            "MiniMax H3 is guidance-distilled: it takes no negative prompt", "drop --negative-prompt"
        )
    if guidance_scale not in (None, 1.0):
        raise SetseqError("MiniMax H3 is guidance-distilled: it takes no guidance scale", "drop --cfg")
    if not 1 <= frames <= MAX_FRAMES:
        raise SetseqError(
            f"MiniMax H3 makes at most {MAX_FRAMES} frames (15 s at 24 fps), not {frames}",
            f"use --frames {MAX_FRAMES}",
        )
    return max(aligned_frames(frames), MIN_FRAMES)


# -- ComfyUI: the original checkpoint's names ----------------------------------------------------------------
_COMFY = {
    "attn.to_q": ("attn.qkv_proj", 0),
    "attn.to_k": ("attn.qkv_proj", 1),
    "attn.to_v": ("attn.qkv_proj", 2),
    "attn.to_out.0": ("attn.out_proj", 0),
    "ff.net.0.proj": ("mlp.fc1", 0),
    "ff.net.2": ("mlp.fc2", 0),
}
COMFYUI_FUSED = {"attn.qkv_proj": 3}


def comfyui_slot(module: str) -> tuple[str, int]:
    """(ComfyUI module name, slot in its fused weight) of a diffusers MiniMax H3 module."""
    m = re.match(r"^transformer_blocks\.(\d+)\.(.+)$", module)
    if m and m.group(2) in _COMFY:
        name, slot = _COMFY[m.group(2)]
        return f"blocks.{m.group(1)}.{name}", slot
    raise SetseqError(
        f"no ComfyUI name is known for module '{module}' of a MiniMax H3 model",
        "export with --format diffusers instead",
    )


def comfyui_rows(name: str, lora_b: torch.Tensor) -> torch.Tensor:
    """lora_B (out, r) of ComfyUI module `name` in ComfyUI's row order: its `mlp.fc1` holds the SwiGLU halves
    as [gate; value], diffusers' `ff.net.0.proj` as [value; gate]."""
    if not name.endswith(".mlp.fc1"):
        return lora_b
    value, gate = lora_b.chunk(2, dim=0)
    return torch.cat([gate, value], dim=0)


# -- the tiny test model (random weights, built from config). diffusers and transformers are imported inside:
# they take seconds, and only tests and benchmarks build one.
def _tiny_text_encoder(tokenizer):
    """A tiny `Qwen3VLForConditionalGeneration`: 51 decoder layers 16 wide (H3 reads hidden_states[50])."""
    # (heavy to import: loaded where used)
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=51, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=4096,
        rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 2], "mrope_interleaved": True},
    )  # fmt: skip
    vision = dict(
        depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16, patch_size=2,
        spatial_merge_size=1, temporal_patch_size=1, num_position_embeddings=16, deepstack_visual_indexes=[],
    )  # fmt: skip
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids[0], video_token_id=ids[1],
        vision_start_token_id=ids[2], vision_end_token_id=ids[3],
    )  # fmt: skip
    return Qwen3VLForConditionalGeneration(config).eval()


def build_tiny_minimax_h3(
    folder: str | Path, seed: int = 0, *, layers: int = 2, latent_channels: int = 24
) -> Path:
    """Write a tiny random MiniMax H3 t2va pipeline (`MiniMaxH3ModularPipeline`, `modular_model_index.json`): a
    word-level tokenizer with Qwen's vision tokens, a tiny Qwen3-VL, the video VAE with H3's real geometry (16x
    in space, 17n + 5 frames -> 5n + 2 latents, 24 channels), a tiny audio VAE, a tiny DiT and the two
    schedulers (shift 12 and 3). No `processor`: transformers' Qwen3VLProcessor needs torchvision (see
    `_TokenTypes`). Configs after the issue-33 research probes (`probe_minimax_h3_pipeline.py`)."""
    # (heavy to import: loaded where used)
    from diffusers import (
        AutoencoderKLMiniMaxH3,
        AutoencoderKLMiniMaxH3Audio,
        MiniMaxH3Scheduler,
        MiniMaxH3Transformer3DModel,
    )
    from diffusers.modular_pipelines import MiniMaxH3Blocks

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer((*TINY_WORDS, *VISION_TOKENS), max_length=4096)
    text_encoder = _tiny_text_encoder(tokenizer)
    vae = AutoencoderKLMiniMaxH3(
        latent_channels=latent_channels, block_out_channels=(8,) * 6, layers_per_block=1, norm_num_groups=4,
        decoder_num_layers=1, decoder_num_attention_heads=2, decoder_attention_head_dim=8,
        decoder_num_register_tokens=1, decoder_ffn_mult=1,
        latents_mean=[0.1] * latent_channels, latents_std=[0.8] * latent_channels,
    ).eval()  # fmt: skip
    audio_vae = AutoencoderKLMiniMaxH3Audio(
        encoder_dim=4, encoder_rates=(2, 4, 4, 5, 5), latent_dim=32, latent_channels=8, num_attention_heads=2,
        decoder_dim=128, decoder_rates=(5, 5, 2, 2, 2, 2, 2), decoder_kernel_sizes=(9, 9, 4, 4, 4, 4, 4),
        resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),), latents_mean=[0.0] * 8, latents_std=[1.0] * 8,
    ).eval()  # fmt: skip
    transformer = MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=layers, num_refiner_layers=1,
        ffn_dim=64, in_channels=latent_channels, audio_in_channels=8, patch_size=(1, 2, 2), text_dim=16, freq_dim=16,
        time_embed_hidden_dim=32, time_embed_dim=16, rope_freq_dim=2,
    ).eval()  # fmt: skip
    pipe = MiniMaxH3Blocks().init_pipeline()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe.update_components(
            text_encoder=text_encoder, tokenizer=tokenizer, vae=vae, audio_vae=audio_vae, transformer=transformer,
            scheduler=MiniMaxH3Scheduler(shift=12.0), audio_scheduler=MiniMaxH3Scheduler(shift=3.0),
        )  # fmt: skip
        pipe.save_pretrained(str(folder), overwrite_modular_index=True)
    index = folder / "modular_model_index.json"
    data = json.loads(index.read_text())
    data.pop("processor", None)  # not saved (none built): an entry would send diffusers to the hub for it
    index.write_text(json.dumps(data, indent=2))
    return folder


# MiniMaxH3Transformer3DModel's defaults are the released config (MiniMaxAI/MiniMax-H3 `transformer/`): 33.1B
# parameters, the 61.7 GB bf16 partition. Text: Qwen3-VL's 5120-wide hidden state; a long prompt's 256 tokens.
FAMILY = Family(
    "minimax-h3",
    MiniMaxH3Backbone.load,
    fps=FPS,
    pipelines=(PIPELINE,),  # text-to-video (t2va) only; its modular_model_index.json names it
    comfyui=comfyui_slot,
    comfyui_fused=COMFYUI_FUSED,
    comfyui_rows=comfyui_rows,
    shapes={
        "minimax-h3": BenchShape(
            "minimax-h3",
            "MiniMaxH3Transformer3DModel",
            dict(
                num_attention_heads=56,
                attention_head_dim=128,
                hidden_size=5376,
                num_layers=50,
                num_refiner_layers=2,
                ffn_dim=14336,
                in_channels=24,
                audio_in_channels=32,
                patch_size=(1, 2, 2),
                text_dim=5120,
                freq_dim=256,
                time_embed_hidden_dim=5376,
                time_embed_dim=2688,
                rope_freq_dim=16,
            ),  # fmt: skip
            24,
            256,
            5120,
            note="MiniMax H3 (33.1B, trained video only); --frames counts LATENT frames here (37 = 124 frames)",
        )
    },
    # trained on 22-frame clips (7 latent frames); generation makes 124 and keeps the first 22
    tiny=(TinyModel("minimax-h3", build_tiny_minimax_h3, PIPELINE, 22, (32, 32), 12),),
    backbone=MiniMaxH3Backbone,
)
