"""Toy-world metrics checked against rendered ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from setseq.data.synthetic import CONCEPTS, Appearance, ConceptSpec, Motion, render, trajectory
from setseq.eval.metrics import mse
from setseq.eval.toy_metrics import (
    appearance_fidelity,
    edit_adherence,
    pixel_temporal_consistency,
    sprite_motion_fidelity,
    trajectory_distance,
)

SPEC = ConceptSpec(
    Appearance("star", "orange", "solid", 0.38, "black", "plain"), Motion("figure_eight", None)
)


def _with(spec: ConceptSpec, motion: Motion | None = None, **appearance) -> ConceptSpec:
    return ConceptSpec(dataclasses.replace(spec.appearance, **appearance), motion or spec.motion, spec.start)


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    return render(SPEC, frames=9, size=32)


# ------------------------------------------------------------------------------------------ appearance


def test_appearance_fidelity_identical_and_vs_spec(ref):
    assert appearance_fidelity(ref, ref) == 1.0
    assert appearance_fidelity(ref, SPEC) == 1.0
    # appearance does not care about motion or background
    other = render(_with(SPEC, Motion("linear", "left"), bg_colour="white", bg_pattern="stripes"), frames=9)
    assert appearance_fidelity(other, ref) == 1.0


def test_appearance_fidelity_drops_with_each_changed_attribute(ref):
    assert appearance_fidelity(render(_with(SPEC, colour="blue"), frames=9), ref) == pytest.approx(2 / 3)
    assert appearance_fidelity(
        render(_with(SPEC, colour="blue", shape="square"), frames=9), ref
    ) == pytest.approx(1 / 3)
    changed = _with(SPEC, colour="blue", shape="square", pattern="stripes")
    assert appearance_fidelity(render(changed, frames=9), ref) == 0.0
    assert appearance_fidelity(render(changed, frames=9), SPEC) == 0.0
    assert appearance_fidelity(ref, changed) == 0.0


def test_appearance_fidelity_of_an_empty_video_is_zero(ref):
    empty = np.full_like(ref, 20)
    assert appearance_fidelity(empty, ref) == 0.0


# ---------------------------------------------------------------------------------------------- motion


def test_sprite_motion_fidelity_identical(ref):
    m = sprite_motion_fidelity(ref, ref)
    assert m["distance"] == pytest.approx(0.0, abs=1e-9) and m["similarity"] == pytest.approx(1.0)
    assert m["family_match"] and m["direction_match"] and m["family"] == "figure_eight"


def test_sprite_motion_fidelity_vs_spec_and_other_frame_counts(ref):
    m = sprite_motion_fidelity(ref, SPEC)
    assert m["distance"] < 0.1 and m["family_match"]
    m = sprite_motion_fidelity(render(SPEC, frames=17), ref)
    assert m["distance"] < 0.25 and m["family_match"]  # periodic paths: phase f/F differs slightly with F


def test_sprite_motion_fidelity_ignores_appearance_but_not_motion(ref):
    same_motion = render(_with(SPEC, colour="cyan", shape="square", bg_colour="white"), frames=9)
    good = sprite_motion_fidelity(same_motion, ref)
    assert good["family_match"] and good["similarity"] > 0.9
    for motion in (Motion("linear", "left"), Motion("circle_cw", None), Motion("static", None)):
        bad = sprite_motion_fidelity(render(_with(SPEC, motion), frames=9), ref)
        assert not bad["family_match"], motion
        assert bad["similarity"] < good["similarity"] - 0.2, (motion, bad)


def test_motion_direction_match():
    left = ConceptSpec(Appearance(), Motion("linear", "left"))
    right = ConceptSpec(Appearance(), Motion("linear", "right"))
    m = sprite_motion_fidelity(render(right, frames=9), render(left, frames=9))
    assert m["family_match"] and not m["direction_match"] and m["distance"] > 1.5


def test_trajectory_distance_cases():
    circ = trajectory(ConceptSpec(Appearance(), Motion("circle_cw", None)), 9)
    still = np.full((9, 2), 0.5)
    assert trajectory_distance(circ, circ) == pytest.approx(0.0, abs=1e-12)
    assert trajectory_distance(circ, circ * 0.5 + 0.1) == pytest.approx(0.0, abs=1e-9)  # scale/shift free
    assert trajectory_distance(still, still) == 0.0
    assert trajectory_distance(circ, still) == pytest.approx(1.0)
    gappy = circ.copy()
    gappy[[2, 5]] = np.nan
    assert trajectory_distance(gappy, circ) < 0.15
    assert trajectory_distance(np.full((9, 2), np.nan), circ) == 2.0


# ------------------------------------------------------------------------------------------------ edits


def test_edit_adherence():
    spec = _with(SPEC, Motion("linear", "left"), bg_colour="white", bg_pattern="stripes")
    v = render(spec, frames=9)
    assert edit_adherence(v, {"bg_colour": "white", "bg_pattern": "stripes"}) == 1.0
    assert edit_adherence(v, {"family": "linear", "direction": "left"}) == 1.0
    assert edit_adherence(v, {"bg_colour": "white", "direction": "right"}) == 0.5
    assert edit_adherence(v, {"bg_colour": "blue", "bg_pattern": "plain", "family": "spiral"}) == 0.0
    with pytest.raises(ValueError):
        edit_adherence(v, {"background": "white"})
    with pytest.raises(ValueError):
        edit_adherence(v, {})


# -------------------------------------------------------------------------------------- consistency, mse


def test_pixel_temporal_consistency():
    still = render(ConceptSpec(Appearance(), Motion("static", None)), frames=9)
    assert pixel_temporal_consistency(still) == pytest.approx(1.0)
    assert pixel_temporal_consistency(still[:1]) == 1.0
    moving = render(CONCEPTS["pink_cross_zigzag"], frames=17)
    tc = pixel_temporal_consistency(moving)
    assert 0.0 < tc < 1.0
    shuffled = moving[np.random.default_rng(0).permutation(17)]
    assert pixel_temporal_consistency(shuffled) < tc
    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert abs(pixel_temporal_consistency(noise)) < 0.05
    flat = np.zeros((3, 8, 8, 3), np.uint8)
    assert pixel_temporal_consistency(flat) == 1.0


def test_mse_on_the_toy_world(ref):
    assert mse(ref, ref) == 0.0
    assert mse(np.zeros((2, 8, 8, 3), np.uint8), np.full((2, 8, 8, 3), 255, np.uint8)) == pytest.approx(1.0)
    other = render(_with(SPEC, colour="blue"), frames=9)
    assert 0.0 < mse(other, ref) < 0.1
    # resampling: a still clip at another frame count and resolution matches away from the sprite edges
    still = ConceptSpec(Appearance("square", "red", "solid", 0.35, "black", "plain"), Motion("static", None))
    assert mse(render(still, frames=17, size=32), render(still, frames=9, size=32)) == 0.0
    assert mse(render(still, frames=5, size=64), render(still, frames=9, size=32)) < 0.02
    assert mse(render(still, frames=5, size=64), render(_with(still, colour="blue"), frames=9)) > 0.02
    with pytest.raises(ValueError):
        mse(ref[0], ref)
