"""The models behind the evaluation metrics, loaded only from disk: CLIP, DINOv2 and an ONNX ArcFace.

Nothing here downloads. A model is given as a local folder (``--clip PATH``), or as a hub id that must
already be in the Hugging Face cache (``from_pretrained(id, local_files_only=True)``); without either,
the default folder ``~/.cache/setseq/<kind>`` and then the default id in the hub cache are tried. When
none is there, the :class:`~setseq.errors.SetseqError` names the exact download command and where to put
the result.

Every embedder maps uint8 frames (F, H, W, 3) to L2-normalised float32 embeddings (F, D):

* :class:`ClipEmbedder` - CLIP image and text embeddings (``get_image_features`` / ``get_text_features``,
  the projected space where image and text compare; C-T, TC, and ID for concepts without faces).
* :class:`DinoEmbedder` - DINOv2 CLS token (``pooler_output``): image similarity that follows identity
  and shape more than semantics; the ID fallback preferred over CLIP when given.
* :class:`ArcFaceEmbedder` - an insightface ArcFace ONNX model (``w600k_r50.onnx``, ``glintr100.onnx``)
  run with onnxruntime: RGB 112 x 112, ``(x - 127.5) / 127.5``, NCHW. There is no face detector: each
  frame's **centre square** is used as the face crop, which suits talking-head or portrait framing and
  not full-body shots (crop the videos to the face first there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from setseq.data.video import resize_center_crop
from setseq.errors import SetseqError

__all__ = [
    "DEFAULT_IDS",
    "ArcFaceEmbedder",
    "ClipEmbedder",
    "DinoEmbedder",
    "default_dir",
    "load_arcface",
    "load_clip",
    "load_dino",
]

#: The model each metric uses when no path is given (looked up in the hub cache only).
DEFAULT_IDS = {"clip": "openai/clip-vit-base-patch32", "dino": "facebook/dinov2-base"}
ARCFACE_HINT = (
    "get insightface's buffalo_l pack (its w600k_r50.onnx) or antelopev2 (glintr100.onnx), "
    "`pip install onnxruntime`, and pass --arcface PATH/TO/w600k_r50.onnx"
)


def default_dir(kind: str) -> Path:
    """Where `setseq eval` looks for a model of `kind` ('clip', 'dino') when no path is given."""
    root = os.environ.get("SETSEQ_CACHE") or Path.home() / ".cache" / "setseq"
    return Path(root) / kind


def _l2(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.detach().to(torch.float32), dim=-1)


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features (projected embeds in pooler_output)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _batches(frames: np.ndarray, batch: int):
    for i in range(0, len(frames), batch):
        yield [np.ascontiguousarray(f) for f in frames[i : i + batch]]


def _download_fix(kind: str, flag: str, also: str) -> str:
    where = default_dir(kind)
    return (
        f"run `hf download {DEFAULT_IDS[kind]} --local-dir {where}` (on a machine with internet, then copy "
        f"that folder to {where} here), or pass {flag} PATH to a local {kind.upper()} folder; {also}"
    )


def _resolve(spec: str | None, kind: str, flag: str, also: str) -> Path:
    """-> a local model folder: `spec` itself, or the hub cache's snapshot of the id `spec` (never a
    download: transformers' `from_pretrained(id, local_files_only=True)` still asks the network for
    adapter files, with retries, so ids are resolved to their cached folder first)."""
    if spec is None:
        d = default_dir(kind)
        if (d / "config.json").is_file():
            return d
        spec = DEFAULT_IDS[kind]
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise SetseqError(
                f"{flag} {p} is not a {kind.upper()} model folder (no config.json in it)",
                _download_fix(kind, flag, also),
            )
        return p
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download  # (only to fetch a missing model)

        try:
            return Path(snapshot_download(spec, local_files_only=True))
        except Exception:  # LocalEntryNotFoundError, or an id the hub's validators refuse
            raise SetseqError(
                f"the {kind.upper()} model {spec} is not in the Hugging Face cache (setseq never downloads)",
                _download_fix(kind, flag, also),
            ) from None
    raise SetseqError(f"{flag} {spec} does not exist", _download_fix(kind, flag, also))


def _load(loader, path: Path, kind: str, flag: str, also: str):
    try:
        return loader(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SetseqError(
            f"the {kind.upper()} model in {path} cannot be loaded ({' '.join(str(exc).split())[:160]})",
            _download_fix(kind, flag, also),
        ) from None


@dataclass
class ClipEmbedder:
    """CLIP image and text embeddings in the shared projected space, L2-normalised."""

    model: Any
    processor: Any
    name: str
    batch: int = 16

    @torch.no_grad()
    def images(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (F, H, W, 3) -> (F, D)."""
        out = []
        for chunk in _batches(frames, self.batch):
            inputs = self.processor(images=chunk, return_tensors="pt")
            out.append(_features(self.model.get_image_features(pixel_values=inputs["pixel_values"])))
        return _l2(torch.cat(out))

    @torch.no_grad()
    def texts(self, prompts: list[str]) -> torch.Tensor:
        """-> (N, D). Prompts longer than the text encoder's context are truncated."""
        tok = self.processor.tokenizer
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        inputs = tok(list(prompts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        feats = self.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
        )
        return _l2(_features(feats))


@dataclass
class DinoEmbedder:
    """DINOv2 image embeddings (CLS token after the final layer norm), L2-normalised."""

    model: Any
    processor: Any
    name: str
    batch: int = 16

    @torch.no_grad()
    def images(self, frames: np.ndarray) -> torch.Tensor:
        out = []
        for chunk in _batches(frames, self.batch):
            inputs = self.processor(images=chunk, return_tensors="pt")
            o = self.model(pixel_values=inputs["pixel_values"])
            out.append(o.pooler_output if o.pooler_output is not None else o.last_hidden_state[:, 0])
        return _l2(torch.cat(out))


def centre_square(frames: np.ndarray, size: int) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, size, size, 3): the centre square of each frame, resized (bicubic)."""
    return np.stack([resize_center_crop(f, (size, size)) for f in frames])


@dataclass
class ArcFaceEmbedder:
    """An ArcFace ONNX model on each frame's centre square (no face detection; see the module docstring)."""

    session: Any
    name: str
    size: int = 112
    batch: int = 16

    def images(self, frames: np.ndarray) -> torch.Tensor:
        inp = self.session.get_inputs()[0]
        crops = centre_square(frames, self.size).astype(np.float32)
        x = ((crops - 127.5) / 127.5).transpose(0, 3, 1, 2)  # (F, 3, 112, 112) RGB
        fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] > 0
        step = inp.shape[0] if fixed_batch else self.batch
        out = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if fixed_batch and len(chunk) < step:  # a model exported with a fixed batch: pad and cut
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), axis=0)])
            feats = self.session.run(None, {inp.name: np.ascontiguousarray(chunk)})[0]
            out.append(torch.from_numpy(np.asarray(feats, np.float32)[: len(x[i : i + step])]))
        return _l2(torch.cat(out).reshape(len(x), -1))


_ALSO_CLIP = "or leave the CLIP metrics out with --metrics mse,motion"
_ALSO_DINO = "or leave --dino out (ID then uses CLIP image similarity)"


def load_clip(spec: str | None = None) -> ClipEmbedder:
    """CLIP from a folder or a cached hub id (default: ~/.cache/setseq/clip, then openai/clip-vit-base-patch32)."""
    from transformers import (  # (transformers: loaded only by the metrics that use it)
        CLIPModel,
        CLIPProcessor,
    )

    path = _resolve(spec, "clip", "--clip", _ALSO_CLIP)
    model = _load(CLIPModel.from_pretrained, path, "clip", "--clip", _ALSO_CLIP)
    processor = _load(CLIPProcessor.from_pretrained, path, "clip", "--clip", _ALSO_CLIP)
    return ClipEmbedder(model.eval(), processor, spec or str(path))


def load_dino(spec: str | None = None) -> DinoEmbedder:
    """DINOv2 from a folder or a cached hub id (default: ~/.cache/setseq/dino, then facebook/dinov2-base)."""
    from transformers import AutoImageProcessor, AutoModel

    path = _resolve(spec, "dino", "--dino", _ALSO_DINO)
    model = _load(AutoModel.from_pretrained, path, "dino", "--dino", _ALSO_DINO)
    processor = _load(AutoImageProcessor.from_pretrained, path, "dino", "--dino", _ALSO_DINO)
    return DinoEmbedder(model.eval(), processor, spec or str(path))


def load_arcface(path: str | os.PathLike[str]) -> ArcFaceEmbedder:
    """An ArcFace ONNX file, run with onnxruntime on the CPU."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SetseqError(f"--arcface {p} does not exist or is not a file", ARCFACE_HINT)
    try:
        import onnxruntime as ort  # (an optional dependency: ID on faces only)
    except ImportError:
        raise SetseqError(
            "--arcface needs onnxruntime, which is not installed",
            "`pip install onnxruntime` (or `pip install 'setseq[faces]'`), or leave --arcface out (ID then uses image similarity)",
        ) from None
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise SetseqError(
            f"--arcface {p} is not an ONNX model onnxruntime can load ({' '.join(str(exc).split())[:160]})",
            ARCFACE_HINT,
        ) from None
    shape = session.get_inputs()[0].shape
    size = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else 112
    return ArcFaceEmbedder(session, str(p), size=size)
