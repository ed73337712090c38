"""Detectors of the toy world: recover a clip's attributes from its pixels alone.

:func:`detect_sprite` finds the sprite's colour, shape, pattern and per-frame centre and the background,
:func:`detect_background` the background alone, :func:`detect_motion` the motion family, direction and speed
of a trajectory. They read clean renders of :mod:`setseq.data.synthetic` and (blurry, noisy) model outputs
alike; :mod:`setseq.eval.toy_metrics` and :mod:`setseq.eval.edits` score generated videos with them.
Videos are uint8 (F, H, W, 3); positions (F, 2) are ``(x, y)`` normalized to ``[0, 1]``, nan where missing.
"""

from __future__ import annotations

import math

import numpy as np

from setseq.data.synthetic import (
    BG_COLOURS,
    BG_SHADES,
    COLOURS,
    FAMILY_DIRECTIONS,
    MIN_COLOUR_DISTANCE,
    MOTION_FAMILIES,
    SHAPES,
    SPRITE_SHADES,
    Appearance,
    ConceptSpec,
    Motion,
    colour_distance,
    shape_mask,
    trajectory,
)

__all__ = ["STATIC_SPREAD", "detect_background", "detect_motion", "detect_sprite", "normalize_trajectory"]

_MASK_THRESHOLD = 0.45 * MIN_COLOUR_DISTANCE
STATIC_SPREAD = 0.03  # RMS spread (normalized units) below which a trajectory counts as static
_SHAPE_PERIOD = {
    "circle": 0.0,
    "square": 90.0,
    "cross": 90.0,
    "diamond": 180.0,
    "triangle": 120.0,
    "star": 72.0,
}
_SPEED_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(21))


def _downsample(video: np.ndarray, target: int = 64) -> tuple[np.ndarray, int]:
    """Block-average (F, H, W, 3) by an integer k so that min(H, W) < 2 * target; (float32 video, k)."""
    v = np.asarray(video, np.float32)
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
        raise ValueError(f"expected a (F, H, W, 3) video, got shape {v.shape}")
    k = min(v.shape[1], v.shape[2]) // target
    if k <= 1:
        return v, 1
    f, h, w, _ = v.shape
    v = v[:, : h - h % k, : w - w % k]
    return v.reshape(f, h // k, k, w // k, k, 3).mean(axis=(2, 4)), k


def _nearest(pixels: np.ndarray, protos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest prototype and the distance to it, for (..., 3) pixels."""
    d2 = (pixels**2).sum(-1)[..., None] - 2.0 * pixels @ protos.T + (protos**2).sum(-1)
    idx = d2.argmin(axis=-1)
    return idx, np.sqrt(np.maximum(np.take_along_axis(d2, idx[..., None], axis=-1)[..., 0], 0.0))


def _impurity(b: np.ndarray, valid: np.ndarray, axis: int) -> float:
    """Mean within-line variance of binary map ``b`` along lines of ``axis`` (0: columns, 1: rows)."""
    n = valid.sum(axis=axis).astype(float)
    k = (b & valid).sum(axis=axis).astype(float)
    ok = n > 0
    if not ok.any():
        return 0.0
    m = k[ok] / n[ok]
    return float((m * (1 - m) * n[ok]).sum() / n[ok].sum())


def _segment_distance(v: np.ndarray, a, b) -> tuple[np.ndarray, np.ndarray]:
    """Distance of pixels to the RGB segment a-b (any blend of the two) and the position t in [0, 1]."""
    a = np.asarray(a, np.float32)
    ab = np.asarray(b, np.float32) - a
    t = np.clip(((v - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(v - a - t[..., None] * ab, axis=-1), t


def _background(v: np.ndarray) -> tuple[str, str]:
    names = list(BG_COLOURS)
    protos = np.array([BG_COLOURS[n] for n in names] + [BG_SHADES[n] for n in names], np.float32)
    idx, _ = _nearest(v.reshape(-1, 3), protos)
    colour = names[int(np.bincount(idx % len(names), minlength=len(names)).argmax())]
    d_seg, t = _segment_distance(v, BG_COLOURS[colour], BG_SHADES[colour])
    bg_like = d_seg < _MASK_THRESHOLD
    shade = (t > 0.5) & bg_like
    n = bg_like.sum(axis=0)
    valid = n > 0
    frac = np.where(valid, shade.sum(axis=0) / np.maximum(n, 1), 0.0)
    b = frac > 0.5
    p = b[valid].mean() if valid.any() else 0.0
    if p < 0.25:
        return colour, "plain"
    col_imp, row_imp = _impurity(b, valid, 0), _impurity(b, valid, 1)
    return colour, ("stripes" if col_imp < 0.4 * row_imp else "checker")


def detect_background(video: np.ndarray) -> tuple[str, str]:
    """(bg_colour, bg_pattern) by nearest-colour voting over all pixels and the shade layout over time."""
    return _background(_downsample(video)[0])


def _clean(mask: np.ndarray, min_neighbours: int = 3) -> np.ndarray:
    """Drop mask pixels with fewer than ``min_neighbours`` of their 8 neighbours set (noise specks)."""
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    nb = sum(
        p[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].astype(np.int32)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )
    return mask & (nb >= min_neighbours)


def _erode(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    return mask & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]


_UNIT_AREA: dict[str, float] = {}


def _unit_area(shape: str) -> float:
    if shape not in _UNIT_AREA:
        g = (np.arange(400) + 0.5) / 400 - 0.5
        u, v = np.meshgrid(g * 1.2, g * 1.2)
        _UNIT_AREA[shape] = float(shape_mask(shape, u, v).mean() * 1.44)
    return _UNIT_AREA[shape]


_SHAPE_SCALES = (0.92, 1.0, 1.08)
_SHAPE_ANGLES: dict[str, np.ndarray] = {
    sh: (np.deg2rad(np.arange(0.0, p, 6.0)) if p else np.zeros(1)) for sh, p in _SHAPE_PERIOD.items()
}


def _classify_shape(masks: list[np.ndarray]) -> str:
    """Rotation- and scale-invariant template matching at the mask's own pixel centres: best mean IoU.

    Each shape is drawn at the mask centroid, scaled to the mask area (x 0.92 / 1 / 1.08), at every
    rotation over its symmetry period (6 degree steps).
    """
    scores = dict.fromkeys(SHAPES, 0.0)
    for m in masks:
        ys, xs = np.nonzero(m)
        area = float(len(xs))
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        s_max = max(math.sqrt(area / _unit_area(sh)) for sh in SHAPES)
        r = int(math.ceil(0.6 * s_max * max(_SHAPE_SCALES))) + 1
        x0, x1 = max(0, int(cx) - r), min(m.shape[1], int(cx) + r + 1)
        y0, y1 = max(0, int(cy) - r), min(m.shape[0], int(cy) + r + 1)
        target = m[y0:y1, x0:x1].ravel()
        gy, gx = np.mgrid[y0:y1, x0:x1]
        dx, dy = (gx + 0.5 - cx).ravel(), (gy + 0.5 - cy).ravel()
        for sh in SHAPES:
            ang = _SHAPE_ANGLES[sh]
            inv = 1.0 / (math.sqrt(area / _unit_area(sh)) * np.asarray(_SHAPE_SCALES))
            c = (np.cos(ang)[:, None] * inv[None, :]).reshape(-1, 1)
            sn = (np.sin(ang)[:, None] * inv[None, :]).reshape(-1, 1)
            t = shape_mask(sh, c * dx + sn * dy, c * dy - sn * dx)
            inter = (t & target).sum(axis=1)
            scores[sh] += float((inter / (area + t.sum(axis=1) - inter)).max())
    return max(scores, key=scores.__getitem__)


def _classify_pattern(alt: np.ndarray, valid: np.ndarray, frames: np.ndarray) -> str:
    """solid: few shade pixels; stripes: rows pure (horizontal stripes); dots vs checker: empty lines."""
    p = alt.sum() / max(int(valid.sum()), 1)
    if p < 0.08:
        return "solid"
    row_imp = np.mean([_impurity(alt[i], valid[i], 1) for i in frames])
    col_imp = np.mean([_impurity(alt[i], valid[i], 0) for i in frames])
    if row_imp < 0.5 * col_imp:
        return "stripes"
    empty = []
    for axis in (1, 2):  # fraction of mask pixels lying on rows / columns without any shade pixel
        n, k = valid.sum(axis=axis), alt.sum(axis=axis)
        ok = n >= 2
        empty.append(((k[ok] == 0) * n[ok]).sum() / max(int(n[ok].sum()), 1))
    return "dots" if (np.mean(empty) >= 0.25 or p < 0.35) else "checker"


def _centroids(mask: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per-frame centroid (pixel units) of the mask, refined twice inside a disc around the estimate
    (drops stray noise blobs); nan where not ``found``."""
    out = np.full((len(mask), 2), np.nan)
    ys, xs = np.mgrid[0 : mask.shape[1], 0 : mask.shape[2]]
    for i in np.nonzero(found)[0]:
        m = mask[i]
        px, py = xs[m] + 0.5, ys[m] + 0.5
        c = np.array([px.mean(), py.mean()])
        radius = 1.2 * math.sqrt(len(px) / math.pi) + 1.0
        for _ in range(2):
            near = (px - c[0]) ** 2 + (py - c[1]) ** 2 <= radius**2
            if near.sum() < 3:
                break
            c = np.array([px[near].mean(), py[near].mean()])
        out[i] = c
    return out


def _found(areas: np.ndarray) -> np.ndarray:
    if areas.max() < 3:
        return np.zeros(len(areas), bool)
    return areas >= max(3.0, 0.25 * float(np.median(areas[areas > 0])))


def detect_sprite(video: np.ndarray) -> dict:
    """Recover the sprite from pixels: {"colour", "shape", "pattern", "positions", "bg_colour", "bg_pattern"}.

    A loose mask (pixels far from the background colour, or from any blend of the two background pattern
    colours) gives colour and pattern by voting over the RGB segments from each sprite colour to its
    pattern shade; a tight mask (over half the sprite-to-background contrast) gives the shape (template
    matching) and ``positions``: (F, 2) normalized centroids, nan where the sprite is not found
    (e.g. hidden blink frames). Attributes are None when no sprite is found at all.
    """
    video = np.asarray(video)
    v, k = _downsample(video)
    f, h0, w0 = video.shape[:3]
    bg_colour, bg_pattern = _background(v)
    if bg_pattern == "plain":
        d_bg = np.linalg.norm(v - np.asarray(BG_COLOURS[bg_colour], np.float32), axis=-1)
    else:  # blurred pattern edges blend the two background colours: everything on that segment is background
        d_bg = _segment_distance(v, BG_COLOURS[bg_colour], BG_SHADES[bg_colour])[0]
    out = {"colour": None, "shape": None, "pattern": None, "positions": np.full((f, 2), np.nan)}
    out |= {"bg_colour": bg_colour, "bg_pattern": bg_pattern}
    mask = _clean(d_bg > _MASK_THRESHOLD)
    found = _found(mask.sum(axis=(1, 2)))
    if not found.any():
        return out

    # colour: vote over the purest sprite pixels (eroded mask, far from the background; robust to blur)
    fmask = mask & found[:, None, None]
    core = _erode(fmask)
    use = core if core.sum() >= 0.3 * fmask.sum() else fmask
    use = use & (d_bg >= np.quantile(d_bg[use], 0.4))
    # each colour is the RGB segment from its base to its pattern shade (blurred patterns are blends)
    names = list(COLOURS)
    segs = [_segment_distance(v[fmask], COLOURS[n], SPRITE_SHADES[n]) for n in names]
    dist = np.stack([d for d, _ in segs], axis=-1)
    votes = dist[use[fmask]].argmin(axis=-1)
    colour_idx = int(np.bincount(votes, minlength=len(names)).argmax())
    out["colour"] = names[colour_idx]

    # pattern: fraction and layout of shade pixels among the (un-eroded) pixels of the detected colour
    valid = np.zeros(fmask.shape, bool)
    alt = np.zeros(fmask.shape, bool)
    valid[fmask] = dist.argmin(axis=-1) == colour_idx
    alt[fmask] = valid[fmask] & (segs[colour_idx][1] > 0.5)
    out["pattern"] = _classify_pattern(alt, valid, np.nonzero(found)[0])

    # tight mask at half the sprite-to-background contrast: blurred edges count half, noise drops out
    bg_rgb = [BG_COLOURS[bg_colour]] + ([BG_SHADES[bg_colour]] if bg_pattern != "plain" else [])
    sprite_rgb = [COLOURS[out["colour"]]] + (
        [SPRITE_SHADES[out["colour"]]] if out["pattern"] != "solid" else []
    )
    contrast = min(colour_distance(a, b) for a in sprite_rgb for b in bg_rgb)
    tight = _clean(d_bg > max(_MASK_THRESHOLD, 0.5 * contrast), 2)  # keeps thin star tips
    tight_areas = tight.sum(axis=(1, 2))
    tight_found = _found(tight_areas) & found
    if tight_found.sum() >= max(1, found.sum() // 2):
        mask, found = tight, tight_found
    centres = _centroids(mask, found)
    out["positions"] = np.stack([centres[:, 0] * k / w0, centres[:, 1] * k / h0], axis=1)
    areas = mask.sum(axis=(1, 2)) * found
    order = np.argsort(-areas)[: min(5, int(found.sum()))]
    out["shape"] = _classify_shape([mask[i] for i in order])
    return out


def normalize_trajectory(positions: np.ndarray) -> np.ndarray:
    """Subtract the mean and divide by the RMS radius (nan rows ignored and kept; all-zero if static)."""
    p = np.asarray(positions, float)
    ok = ~np.isnan(p).any(axis=1)
    out = np.full_like(p, np.nan)
    if not ok.any():
        return out
    c = p[ok] - p[ok].mean(axis=0)
    rms = math.sqrt(float((c**2).sum(axis=1).mean()))
    out[ok] = c / rms if rms > 1e-9 else c
    return out


_TEMPLATES: dict[int, tuple[list[tuple[str, str | None, float]], np.ndarray]] = {}


def _motion_templates(frames: int) -> tuple[list[tuple[str, str | None, float]], np.ndarray]:
    """Ground-truth trajectories of every (family, direction, speed) on the grid: labels, (T, F, 2)."""
    if frames not in _TEMPLATES:
        labels, paths = [], []
        for fam in MOTION_FAMILIES:
            if fam == "static":
                continue
            for d in FAMILY_DIRECTIONS.get(fam, (None,)):
                for s in _SPEED_GRID:
                    labels.append((fam, d, s))
                    paths.append(trajectory(ConceptSpec(Appearance(), Motion(fam, d, s)), frames))
        _TEMPLATES[frames] = (labels, np.stack(paths))
    return _TEMPLATES[frames]


def detect_motion(positions: np.ndarray) -> dict:
    """Classify a trajectory (F, 2; nan = missing): {"family", "direction", "speed", "distance"}.

    Static when the RMS spread is below 0.03; otherwise the nearest ground-truth template (same F,
    every family / direction and speeds 0.5..1.5) after mean/scale normalisation.
    """
    p = np.asarray(positions, float)
    ok = ~np.isnan(p).any(axis=1)
    if ok.sum() < 2:
        return {"family": "static", "direction": None, "speed": None, "distance": 0.0}
    spread = math.sqrt(float(((p[ok] - p[ok].mean(axis=0)) ** 2).sum(axis=1).mean()))
    if spread < STATIC_SPREAD:
        return {"family": "static", "direction": None, "speed": None, "distance": 0.0}
    q = normalize_trajectory(p[ok])
    labels, paths = _motion_templates(len(p))
    t = paths[:, ok] - paths[:, ok].mean(axis=1, keepdims=True)
    t = t / np.sqrt((t**2).sum(axis=2).mean(axis=1))[:, None, None]
    dist = np.sqrt(((t - q) ** 2).sum(axis=2)).mean(axis=1)
    i = int(dist.argmin())
    best = (*labels[i], float(dist[i]))
    return {"family": best[0], "direction": best[1], "speed": best[2], "distance": best[3]}
