"""The paper's evaluation metrics, plus motion fidelity, as pure functions over frames and embeddings.

Embeddings come from :mod:`setseq.eval.models` (CLIP, DINOv2, ArcFace); here they are plain tensors
(F, D), normalised or not (every function normalises). Frames are uint8 (F, H, W, 3).

| metric | paper | function | better |
|---|---|---|---|
| MSE | mean squared error between corresponding frames, pixels in [0, 1] | :func:`mse` | lower |
| ID | identity similarity, generated vs reference (ArcFace; CLIP / DINO image embeddings without faces) | :func:`identity_similarity` | higher |
| C-T | CLIP similarity of the edit prompt to the aggregate of the frame embeddings | :func:`text_similarity` | higher |
| TC | mean CLIP cosine similarity of consecutive frames | :func:`temporal_consistency` | higher |
| motion | point tracks compared between generated and reference (ours; :mod:`setseq.eval.motion`) | :func:`motion_fidelity` | higher |
"""

from __future__ import annotations

import numpy as np
import torch

from setseq.eval.motion import motion_similarity

__all__ = [
    "identity_similarity",
    "motion_fidelity",
    "mse",
    "resample_video",
    "temporal_consistency",
    "text_similarity",
]


def _check_video(video: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1 or 0 in v.shape:
        raise ValueError(f"{what}: expected a (F, H, W, 3) video, got shape {v.shape}")
    return v


def resize_bilinear(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of (F, H, W, C) float frames (pixel-centre aligned)."""
    f, h0, w0, _ = frames.shape
    if (h0, w0) == (h, w):
        return frames
    y = np.clip((np.arange(h) + 0.5) * h0 / h - 0.5, 0, h0 - 1)
    x = np.clip((np.arange(w) + 0.5) * w0 / w - 0.5, 0, w0 - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    fy, fx = (y - y0)[None, :, None, None], (x - x0)[None, None, :, None]
    top = frames[:, y0][:, :, x0] * (1 - fx) + frames[:, y0][:, :, x1] * fx
    bot = frames[:, y1][:, :, x0] * (1 - fx) + frames[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bot * fy


def _frame_index(n_src: int, n_dst: int) -> np.ndarray:
    """The nearest source frame in time for each of n_dst frames over the same span."""
    if n_dst == 1:
        return np.zeros(1, int)
    return np.rint(np.linspace(0, n_src - 1, n_dst)).astype(int)


def resample_video(video: np.ndarray, frames: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 (F, H, W, 3) -> (frames, *size, 3): nearest frame in time, bilinear in space (as :func:`mse`)."""
    v = _check_video(video, "resample_video")
    if len(v) != frames:
        v = v[_frame_index(len(v), frames)]
    if v.shape[1:3] == tuple(size):
        return v
    out = resize_bilinear(v.astype(np.float64), int(size[0]), int(size[1]))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mse(generated: np.ndarray, reference: np.ndarray) -> float:
    """MSE between corresponding frames, pixels in [0, 1]; `generated` is resampled to the reference's
    frame count (nearest frame in time) and size (bilinear) when they differ. Computed a frame at a time, so
    an 81-frame 480p video does not take gigabytes of float64. The toy world's MSE too."""
    g = _check_video(generated, "mse")
    r = _check_video(reference, "mse")
    idx = _frame_index(len(g), len(r)) if len(g) != len(r) else np.arange(len(r))
    total = 0.0
    for i, j in enumerate(idx):
        gf = resize_bilinear(g[j : j + 1].astype(np.float64) / 255.0, r.shape[1], r.shape[2])
        total += float(((gf - r[i : i + 1].astype(np.float64) / 255.0) ** 2).mean())
    return total / len(r)


def _unit(x: torch.Tensor, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{what}: expected embeddings (N, D), got shape {tuple(x.shape)}")
    return torch.nn.functional.normalize(x.to(torch.float64), dim=-1)


def _aggregate(emb: torch.Tensor) -> torch.Tensor:
    """The video's embedding: the mean of the normalised frame embeddings, normalised again. (D,)"""
    return torch.nn.functional.normalize(emb.mean(dim=0), dim=0)


def identity_similarity(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """ID: mean over generated frames of the cosine similarity to the reference's aggregate embedding.

    `generated` (F, D) and `reference` (G, D) from the same model (ArcFace on faces, else CLIP / DINO)."""
    g, r = _unit(generated, "identity_similarity"), _unit(reference, "identity_similarity")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"identity_similarity: embedding sizes differ ({g.shape[1]} vs {r.shape[1]})")
    return float((g @ _aggregate(r)).mean())


def text_similarity(frames: torch.Tensor, text: torch.Tensor) -> float:
    """C-T: cosine similarity of the prompt's CLIP text embedding (D,) or (1, D) to the aggregate (mean,
    normalised) of the video's CLIP frame embeddings (F, D). Raw cosine, as the paper's 0.20-0.25."""
    f = _unit(frames, "text_similarity")
    t = _unit(torch.as_tensor(text).reshape(1, -1), "text_similarity")[0]
    if f.shape[1] != t.shape[0]:
        raise ValueError(f"text_similarity: embedding sizes differ ({f.shape[1]} vs {t.shape[0]})")
    return float(_aggregate(f) @ t)


def temporal_consistency(frames: torch.Tensor) -> float:
    """TC: mean cosine similarity of consecutive frame embeddings (F, D); 1.0 for a single frame."""
    f = _unit(frames, "temporal_consistency")
    if len(f) < 2:
        return 1.0
    return float((f[:-1] * f[1:]).sum(dim=-1).mean())


def motion_fidelity(generated: np.ndarray, reference: np.ndarray) -> dict:
    """Motion: point tracks of both videos compared (:func:`setseq.eval.motion.motion_similarity`);
    ``{"similarity" in (0, 1], "distance" >= 0, ...}``. Lengths and sizes may differ."""
    return motion_similarity(
        _check_video(generated, "motion_fidelity"), _check_video(reference, "motion_fidelity")
    )
