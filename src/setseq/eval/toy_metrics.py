"""Toy-world metrics: pure functions over uint8 videos (F, H, W, 3) and :class:`ConceptSpec` ground truth.

All attributes are read back with the analytic detectors of :mod:`setseq.eval.toy_detect`, so the same
functions score clean renders and (blurry, noisy) model outputs. Named apart from the paper's metrics of
:mod:`setseq.eval.metrics`, which work on any video (and whose :func:`~setseq.eval.metrics.mse` the toy
world uses too): :func:`sprite_motion_fidelity` compares the detected sprite's trajectories (the paper's
``motion_fidelity`` compares point tracks), :func:`pixel_temporal_consistency` compares raw frames (the
paper's TC compares CLIP frame embeddings).
"""

from __future__ import annotations

import math

import numpy as np

from setseq.data.synthetic import ConceptSpec, trajectory
from setseq.eval.toy_detect import STATIC_SPREAD, detect_motion, detect_sprite

__all__ = [
    "APPEARANCE_KEYS",
    "EDIT_KEYS",
    "appearance_fidelity",
    "edit_adherence",
    "pixel_temporal_consistency",
    "sprite_motion_fidelity",
    "trajectory_distance",
]

APPEARANCE_KEYS: tuple[str, ...] = ("colour", "shape", "pattern")
EDIT_KEYS: tuple[str, ...] = ("bg_colour", "bg_pattern", "family", "direction", "colour", "shape", "pattern")


def _check_video(video: np.ndarray) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
        raise ValueError(f"expected a (F, H, W, 3) video, got shape {v.shape}")
    return v


def _spec_attributes(spec: ConceptSpec) -> dict:
    a, m = spec.appearance, spec.motion
    return {
        "colour": a.colour,
        "shape": a.shape,
        "pattern": a.pattern,
        "bg_colour": a.bg_colour,
        "bg_pattern": a.bg_pattern,
        "family": m.family,
        "direction": m.direction,
    }


def _video_attributes(video: np.ndarray) -> dict:
    d = detect_sprite(_check_video(video))
    motion = detect_motion(d["positions"])
    return {**d, "family": motion["family"], "direction": motion["direction"]}


def appearance_fidelity(generated: np.ndarray, reference: np.ndarray | ConceptSpec) -> float:
    """Fraction of {colour, shape, pattern} detected in ``generated`` that match ``reference``.

    ``reference`` is a video (its attributes are detected the same way) or a known spec.
    """
    got = _video_attributes(generated)
    want = _spec_attributes(reference) if isinstance(reference, ConceptSpec) else _video_attributes(reference)
    return sum(got[k] is not None and got[k] == want[k] for k in APPEARANCE_KEYS) / len(APPEARANCE_KEYS)


def _fill_nans(p: np.ndarray) -> np.ndarray | None:
    """Linearly interpolate missing (nan) positions over time; None when fewer than 2 are known."""
    ok = ~np.isnan(p).any(axis=1)
    if ok.sum() < 2:
        return None
    idx = np.arange(len(p))
    return np.stack([np.interp(idx, idx[ok], p[ok, j]) for j in range(2)], axis=1)


def _resample(p: np.ndarray, n: int) -> np.ndarray:
    """Linear resampling of an (F, 2) trajectory to n points over the same [0, 1] time span."""
    if len(p) == n:
        return p
    if len(p) == 1:
        return np.repeat(p, n, axis=0)
    src, dst = np.linspace(0.0, 1.0, len(p)), np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(dst, src, p[:, j]) for j in range(2)], axis=1)


def _normalise(p: np.ndarray) -> np.ndarray:
    """Subtract the mean, divide by the RMS radius; a trajectory under STATIC_SPREAD becomes all zeros."""
    c = p - p.mean(axis=0)
    rms = math.sqrt(float((c**2).sum(axis=1).mean()))
    return np.zeros_like(c) if rms < STATIC_SPREAD else c / rms


def trajectory_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-step distance of two (F, 2) trajectories after nan filling, resampling and normalisation.

    0 for identical shapes; about 1 between a moving and a static trajectory; at most 2. A trajectory
    with fewer than 2 known positions counts as maximally distant (2.0) unless both are unknown (0.0).
    """
    fa, fb = _fill_nans(np.asarray(a, float)), _fill_nans(np.asarray(b, float))
    if fa is None or fb is None:
        return 0.0 if fa is None and fb is None else 2.0
    n = max(len(fa), len(fb))
    na, nb = _normalise(_resample(fa, n)), _normalise(_resample(fb, n))
    return float(np.linalg.norm(na - nb, axis=1).mean())


def sprite_motion_fidelity(generated: np.ndarray, reference: np.ndarray | ConceptSpec) -> dict:
    """Compare the detected sprite's trajectories: {"distance", "similarity" = 1 / (1 + distance), "family_match",
    "direction_match", "family", "reference_family"}.

    ``reference`` is a video (trajectory detected) or a spec (ground-truth trajectory at the same F).
    """
    gen = detect_sprite(_check_video(generated))["positions"]
    if isinstance(reference, ConceptSpec):
        ref = trajectory(reference, len(gen))
        ref_family, ref_direction = reference.motion.family, reference.motion.direction
    else:
        ref = detect_sprite(_check_video(reference))["positions"]
        m = detect_motion(ref)
        ref_family, ref_direction = m["family"], m["direction"]
    got = detect_motion(gen)
    d = trajectory_distance(gen, ref)
    return {
        "distance": d,
        "similarity": 1.0 / (1.0 + d),
        "family_match": got["family"] == ref_family,
        "direction_match": got["family"] == ref_family and got["direction"] == ref_direction,
        "family": got["family"],
        "reference_family": ref_family,
    }


def edit_adherence(generated: np.ndarray, requested: dict) -> float:
    """Fraction of requested attributes detected in ``generated``.

    Keys: any of EDIT_KEYS, e.g. {"bg_colour": "white", "family": "linear", "direction": "left"}.
    """
    if not requested:
        raise ValueError("edit_adherence needs at least one requested attribute")
    unknown = set(requested) - set(EDIT_KEYS)
    if unknown:
        raise ValueError(f"unknown edit keys {sorted(unknown)}; expected some of {EDIT_KEYS}")
    got = _video_attributes(generated)
    return sum(got[k] == v for k, v in requested.items()) / len(requested)


def pixel_temporal_consistency(video: np.ndarray) -> float:
    """Mean cosine similarity of consecutive frames (flattened, each mean-centred); 1.0 for one frame.

    The paper's TC (:func:`setseq.eval.metrics.temporal_consistency`) with the mean-centred pixels as each
    frame's embedding, except that two flat frames count as similar (1.0)."""
    v = _check_video(video).astype(np.float64).reshape(len(video), -1)
    if len(v) < 2:
        return 1.0
    v = v - v.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(v, axis=1)
    sims = []
    for i in range(len(v) - 1):
        na, nb = norms[i], norms[i + 1]
        if na < 1e-9 or nb < 1e-9:  # a flat frame: similar only to another flat frame
            sims.append(1.0 if na < 1e-9 and nb < 1e-9 else 0.0)
        else:
            sims.append(float(v[i] @ v[i + 1] / (na * nb)))
    return float(np.mean(sims))
