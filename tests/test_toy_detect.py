"""Tests for the toy-world detectors: attributes recovered from rendered clips, clean and noisy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from setseq.data.synthetic import (
    FAMILY_DIRECTIONS,
    MOTION_FAMILIES,
    Appearance,
    ConceptSpec,
    Motion,
    render,
    sample_spec,
    trajectory,
)
from setseq.eval.toy_detect import detect_background, detect_motion, detect_sprite

# A red circle moving right on black: each test changes a field or two.
BASE = ConceptSpec(Appearance("circle", "red", "solid", 0.35, "black", "plain"), Motion("linear", "right"))


def _spec(colour: str = "red", bg: str = "black", bg_pattern: str = "plain", **motion) -> ConceptSpec:
    appearance = dataclasses.replace(BASE.appearance, colour=colour, bg_colour=bg, bg_pattern=bg_pattern)
    return ConceptSpec(appearance, dataclasses.replace(BASE.motion, **motion))


def _detection_errors(specs, frames, size=32, noise=0.0):
    """Per-attribute error counts of detect_sprite / detect_motion over rendered clips."""
    errors = dict.fromkeys(
        ["colour", "shape", "pattern", "bg_colour", "bg_pattern", "family", "direction"], 0
    )
    for i, s in enumerate(specs):
        f = frames[i % len(frames)]
        v = render(s, frames=f, size=size, seed=1000 + i, noise=noise)
        d = detect_sprite(v)
        m = detect_motion(d["positions"])
        a = s.appearance
        want = {"colour": a.colour, "shape": a.shape, "pattern": a.pattern}
        want |= {"bg_colour": a.bg_colour, "bg_pattern": a.bg_pattern, "family": s.motion.family}
        got = {**d, "family": m["family"]}
        for k in want:
            errors[k] += got[k] != want[k]
        # direction is only defined (and only asserted) for linear / bounce / zigzag
        if s.motion.family in FAMILY_DIRECTIONS:
            errors["direction"] += m["direction"] != s.motion.direction
    return errors


def test_detectors_recover_clean_renders():
    rng = np.random.default_rng(123)
    specs = [sample_spec(rng, allow_held_out=True) for _ in range(220)]
    errors = _detection_errors(specs, frames=(9, 17))
    assert max(errors.values()) <= 2, errors  # >= 99% for every attribute


def test_detectors_robust_to_pixel_noise():
    rng = np.random.default_rng(321)
    specs = [sample_spec(rng) for _ in range(60)]
    errors = _detection_errors(specs, frames=(9, 17), noise=15.0)
    assert max(errors.values()) <= 3, errors  # >= 95%


def test_detectors_other_sizes():
    rng = np.random.default_rng(5)
    specs = [sample_spec(rng) for _ in range(16)]
    for size in (64, (40, 64)):
        errors = _detection_errors(specs, frames=(9,), size=size)
        assert max(errors.values()) <= 1, (size, errors)


def test_detect_background_direct():
    for bg, bgp in (("white", "stripes"), ("gray", "checker"), ("blue", "plain"), ("purple", "stripes")):
        spec = _spec(colour="yellow" if bg != "yellow" else "blue", bg=bg, bg_pattern=bgp)
        assert detect_background(render(spec, frames=5, seed=4)) == (bg, bgp)


def test_detect_sprite_blink_positions_are_nan():
    spec = _spec(family="circle_cw", direction=None, dynamics="blink")
    d = detect_sprite(render(spec, frames=9))
    assert np.isnan(d["positions"][2::3]).all() and not np.isnan(d["positions"][0::3]).any()
    np.testing.assert_allclose(d["positions"][0::3], trajectory(spec, 9)[0::3], atol=0.03)


def test_detect_sprite_empty_video():
    v = np.zeros((4, 32, 32, 3), np.uint8) + np.uint8(20)
    d = detect_sprite(v)
    assert d["colour"] is None and d["shape"] is None and np.isnan(d["positions"]).all()
    assert detect_motion(d["positions"])["family"] == "static"


def test_detect_motion_on_ground_truth_trajectories():
    for fam in MOTION_FAMILIES:
        for d in FAMILY_DIRECTIONS.get(fam, (None,)):
            for frames in (5, 9, 33):
                m = detect_motion(trajectory(_spec(family=fam, direction=d, speed=0.9), frames))
                assert (m["family"], m["direction"]) == (fam, d), (fam, d, frames, m)


def test_detect_motion_tolerates_jitter_and_gaps():
    rng = np.random.default_rng(0)
    tr = trajectory(_spec(family="zigzag", direction="up"), 17) + rng.normal(0, 0.01, (17, 2))
    tr[[3, 8]] = np.nan
    assert detect_motion(tr)["family"] == "zigzag"
    still = 0.5 + rng.normal(0, 0.005, (9, 2))
    assert detect_motion(still)["family"] == "static"


def test_detectors_reject_bad_input():
    with pytest.raises(ValueError):
        detect_sprite(np.zeros((32, 32, 3), np.uint8))
