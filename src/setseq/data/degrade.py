"""Imperfect subject masks on purpose: an exact mask (the toy world's) degraded the ways a real segmenter
errs, to a chosen IoU, to measure how much the background swaps and weights depend on the mask.

Five ways, each with one strength found by bisection until the (soft) IoU with the exact mask reaches the
target: `dilate` (a halo of old background), `erode` (the subject's edge lost), `shift` (the mask lags the
subject, sub-pixel), `blur` (a soft halo) and `drop` (the tracker loses some frames and holds the last
mask it had). IoU of soft masks: sum(min(a, b)) / sum(max(a, b)) (the usual IoU when both are 0/1).

And what a run can do about a real mask's halo (`data.mask_erode`, `data.mask_feather`, `edge`): shrink the
mask by whole pixels, and blend its edge softly, before it is composited and weighted.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("dilate", "erode", "shift", "blur", "drop")

__all__ = ["KINDS", "degrade", "edge", "parse_degrade", "soft_iou"]


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    """sum(min) / sum(max) over every pixel of every frame (1.0 for two empty masks)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    union = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / union) if union > 0 else 1.0


def _gauss(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Each frame blurred by a Gaussian of `sigma` pixels (zero outside the frame)."""
    if sigma <= 0:
        return mask.astype(np.float32)
    r = max(1, int(np.ceil(3 * sigma)))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = torch.from_numpy(mask.astype(np.float32))[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1))
    return x[:, 0].numpy()


def _apply(mask: np.ndarray, kind: str, s: float) -> np.ndarray:
    """`mask` degraded by `kind` at strength s in [0, 1] (0: unchanged)."""
    m = mask.astype(np.float32)
    size = max(m.shape[1:])
    if kind in (
        "dilate",
        "erode",
    ):  # the blurred mask thresholded below / above one half: a grown / shrunk edge
        if s == 0:
            return m
        soft = _gauss(m, 0.15 * size * s)
        if kind == "dilate":  # never less than the mask itself (a thin tip blurs below the threshold)
            return np.maximum(m, (soft > 0.5 * (1 - s)).astype(np.float32))
        return np.minimum(m, (soft > 0.5 + 0.5 * s).astype(np.float32))
    if kind == "blur":
        return _gauss(m, 0.2 * size * s)
    if kind == "shift":  # right and down by up to a third of the frame, bilinear (sub-pixel)
        d = s * size / 3.0
        x = torch.from_numpy(m)[:, None]
        h, w = m.shape[1:]
        theta = torch.tensor([[1, 0, -2 * d / w], [0, 1, -2 * d / h]], dtype=torch.float32)
        grid = F.affine_grid(theta.expand(len(m), 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
            :, 0
        ].numpy()
    if kind == "drop":  # a share s of the frames (evenly spread, never the first) hold the last kept mask
        out, n = m.copy(), len(m)
        k = int(round(s * (n - 1)))
        dropped = set(np.linspace(1, n - 1, k).round().astype(int).tolist()) if k else set()
        for i in range(1, n):
            if i in dropped:
                out[i] = out[i - 1]
        return out
    raise ValueError(f"unknown degradation {kind!r}; one of {', '.join(KINDS)}")


def degrade(mask: np.ndarray, kind: str, target_iou: float, steps: int = 30) -> tuple[np.ndarray, float]:
    """`mask` (F, H, W) degraded by `kind` until its IoU with `mask` is closest to `target_iou`: (the
    degraded mask, float32 in [0, 1], and its IoU, measured). The strength is bisected (IoU falls as it
    grows); `drop` moves by whole frames, so it lands within about 1 / F of the target."""
    if kind not in KINDS:
        raise ValueError(f"unknown degradation {kind!r}; one of {', '.join(KINDS)}")
    exact = mask.astype(np.float32)
    lo, hi = 0.0, 1.0
    best = (exact, 1.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        cand = _apply(exact, kind, mid)
        iou = soft_iou(cand, exact)
        if abs(iou - target_iou) < abs(best[1] - target_iou):
            best = (cand, iou)
        if iou > target_iou:
            lo = mid
        else:
            hi = mid
    return best


def parse_degrade(text: str) -> tuple[str, float]:
    """ "dilate:0.8" -> ("dilate", 0.8); a ValueError naming the form otherwise (`data.mask_degrade`)."""
    kind, _, iou = str(text).partition(":")
    try:
        value = float(iou)
    except ValueError:
        value = -1.0
    if kind not in KINDS or not 0.0 < value <= 1.0:
        raise ValueError(
            f"data.mask_degrade must be KIND:IOU with KIND one of {', '.join(KINDS)}, got {text!r}"
        )
    return kind, value


def edge(mask: np.ndarray, erode: int = 0, feather: float = 0.0) -> np.ndarray:
    """`mask` (F, H, W) with a halo handled: shrunk by `erode` pixels (a pixel keeps the least of itself and
    its 4 neighbours, `erode` times: a subject touching the frame's edge is not eaten from that side), then
    its edge blended over a Gaussian of `feather` pixels. float32 in [0, 1]; (0, 0) leaves it as it is."""
    m = np.asarray(mask, np.float32)
    for _ in range(int(erode)):
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)), mode="edge")
        m = np.minimum.reduce(
            [p[:, 1:-1, 1:-1], p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]
        )
    if feather > 0:
        m = np.clip(_gauss(m, float(feather)), 0.0, 1.0)
    return m.astype(np.float32)
