"""Tests for the synthetic toy world: generator, captions, sampling (the detectors: test_toy_detect.py)."""

from __future__ import annotations

import numpy as np
import pytest

from setseq.data import synthetic as syn
from setseq.data.synthetic import (
    BG_COLOURS,
    COLOURS,
    CONCEPTS,
    DIRECTIONS,
    MOTION_FAMILIES,
    PATTERNS,
    SHAPES,
    Appearance,
    ConceptSpec,
    Motion,
    caption,
    caption_words,
    is_compatible,
    is_held_out,
    render,
    sample_spec,
    trajectory,
)


def _spec(shape="circle", colour="red", pattern="solid", bg="black", bg_pattern="plain", **motion):
    m = {"family": "linear", "direction": "right", "speed": 1.0, "dynamics": "none"} | motion
    return ConceptSpec(Appearance(shape, colour, pattern, 0.35, bg, bg_pattern), Motion(**m))


def _sprite_mask(video: np.ndarray, bg: str) -> np.ndarray:
    return np.any(video != np.asarray(BG_COLOURS[bg], np.uint8), axis=-1)


# ---------------------------------------------------------------------------------------------- API


def test_vocabulary_sizes():
    assert len(SHAPES) >= 5 and {"circle", "square", "triangle"} <= set(SHAPES)
    assert len(COLOURS) >= 8 and len(BG_COLOURS) >= 6
    assert PATTERNS == ("solid", "stripes", "checker", "dots")
    assert len(DIRECTIONS) == 8 and len(MOTION_FAMILIES) == 8
    cols = np.array(list(COLOURS.values()), float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1) + np.eye(len(cols)) * 1e9
    assert d.min() > 75  # visually well separated


def test_render_shape_dtype_and_determinism():
    spec = CONCEPTS["pink_cross_zigzag"]
    a = render(spec, frames=9, size=32, seed=3)
    b = render(spec, frames=9, size=32, seed=3)
    assert a.shape == (9, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[-1])  # it moves


@pytest.mark.parametrize("frames,size", [(1, 32), (2, 16), (33, 32), (5, (24, 40)), (3, 256)])
def test_render_any_frames_and_sizes(frames, size):
    spec = _spec(pattern="stripes", bg_pattern="checker", dynamics="rotate")
    v = render(spec, frames=frames, size=size)
    h, w = (size, size) if isinstance(size, int) else size
    assert v.shape == (frames, h, w, 3)
    assert trajectory(spec, frames).shape == (frames, 2)


def test_render_noise_is_seeded():
    spec = _spec()
    a, b = render(spec, noise=10.0, seed=1), render(spec, noise=10.0, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render(spec, noise=10.0, seed=2))


def test_invalid_specs_raise():
    with pytest.raises(ValueError):
        Appearance(shape="hexagon")
    with pytest.raises(ValueError):
        Motion("circle_cw", "left")
    with pytest.raises(ValueError):
        Motion("linear", None)
    with pytest.raises(ValueError):
        Motion("bounce", "up")
    with pytest.raises(ValueError):
        render(_spec(), frames=0)


@pytest.mark.parametrize("family", MOTION_FAMILIES)
def test_trajectory_is_what_render_draws(family):
    direction = syn.FAMILY_DIRECTIONS.get(family, (None,))[-1]
    spec = _spec(shape="circle", family=family, direction=direction)
    frames = 17
    v = render(spec, frames=frames, size=64)
    mask = _sprite_mask(v, "black")
    ys, xs = np.mgrid[0:64, 0:64]
    for f in range(frames):
        m = mask[f]
        centre = np.array([(xs[m] + 0.5).mean() / 64, (ys[m] + 0.5).mean() / 64])
        np.testing.assert_allclose(centre, trajectory(spec, frames)[f], atol=0.02)
        # the sprite stays in frame: nothing touches the border
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def test_motion_is_clearly_visible():
    tr = trajectory(_spec(family="linear", direction="left"), 9)
    assert 0.4 <= tr[0, 0] - tr[-1, 0] <= 0.6 and np.allclose(tr[:, 1], tr[0, 1])
    tr = trajectory(_spec(family="linear", direction="up-right"), 9)
    assert tr[-1, 0] > tr[0, 0] + 0.25 and tr[-1, 1] < tr[0, 1] - 0.25
    circ = trajectory(_spec(family="circle_cw", direction=None), 16)
    r = np.linalg.norm(circ - circ.mean(0), axis=1)
    assert np.allclose(r, r[0], atol=1e-6) and r[0] > 0.15
    # clockwise on screen with y down: positive cross product
    p, d = circ[:-1] - circ.mean(0), np.diff(circ, axis=0)
    assert np.all(p[:, 0] * d[:, 1] - p[:, 1] * d[:, 0] > 0)
    static = trajectory(_spec(family="static", direction=None), 9)
    np.testing.assert_allclose(static, 0.5)


def test_start_position_is_respected():
    spec = ConceptSpec(Appearance(), Motion("circle_ccw", None), start=(0.3, 0.6))
    np.testing.assert_allclose(trajectory(spec, 9)[0], (0.3, 0.6))


def test_dynamics_change_the_sprite():
    still = render(_spec(family="static", direction=None, shape="square"), frames=8)
    assert all(np.array_equal(still[0], f) for f in still)
    for dyn in ("rotate", "pulse", "blink"):
        v = render(_spec(family="static", direction=None, shape="square", dynamics=dyn), frames=8)
        areas = _sprite_mask(v, "black").sum(axis=(1, 2))
        assert not all(np.array_equal(v[0], f) for f in v), dyn
        if dyn == "blink":
            assert (areas[2::3] == 0).all() and (areas[0::3] > 0).all()
        if dyn == "pulse":
            assert areas.min() < 0.75 * areas.max()


# ------------------------------------------------------------------------------------------ captions


def test_caption_grammar():
    spec = ConceptSpec(Appearance("square", "red", "stripes", 0.3, "blue", "plain"), Motion("linear", "left"))
    assert caption(spec) == "a red striped square moving left on a blue background"
    spec = ConceptSpec(
        Appearance("star", "orange", "checker", 0.3, "white", "stripes"),
        Motion("circle_ccw", None, 1.0, "rotate"),
    )
    assert caption(spec) == (
        "a orange checkered star circling counterclockwise while spinning on a white striped background"
    )
    assert caption(spec, with_pattern=False, with_bg_pattern=False) == (
        "a orange star circling counterclockwise while spinning on a white background"
    )
    assert "moving up and right" in caption(_spec(direction="up-right"))
    assert "tracing a figure eight" in caption(_spec(family="figure_eight", direction=None))
    assert "standing still while blinking" in caption(
        _spec(family="static", direction=None, dynamics="blink")
    )


def test_captions_distinguish_specs():
    rng = np.random.default_rng(0)
    seen: dict[str, tuple] = {}
    for _ in range(300):
        s = sample_spec(rng)
        key = (s.appearance.shape, s.appearance.colour, s.appearance.pattern, s.appearance.bg_colour)
        key += (s.appearance.bg_pattern, s.motion.family, s.motion.direction, s.motion.dynamics)
        assert seen.setdefault(caption(s), key) == key


def test_caption_words_complete():
    vocab = set(caption_words())
    assert {"sks", "in", "motion", "a", "on", "background", ",", "."} <= vocab
    rng = np.random.default_rng(1)
    specs = [sample_spec(rng, allow_held_out=True) for _ in range(500)] + list(CONCEPTS.values())
    for fam in MOTION_FAMILIES:
        for d in syn.FAMILY_DIRECTIONS.get(fam, (None,)):
            for dyn in syn.DYNAMICS:
                specs.append(_spec(family=fam, direction=d, dynamics=dyn))
    for s in specs:
        for kw in ({}, {"with_pattern": False}, {"with_bg_pattern": False}):
            assert set(caption(s, **kw).split()) <= vocab, caption(s, **kw)


# ------------------------------------------------------------------------------------------ sampling


def test_sample_spec_respects_held_out_and_compatibility():
    rng = np.random.default_rng(2)
    specs = [sample_spec(rng) for _ in range(400)]
    assert not any(is_held_out(s) for s in specs)
    assert all(is_compatible(s.appearance) for s in specs)
    assert len({s.motion.family for s in specs}) == len(MOTION_FAMILIES)
    assert len({s.appearance.pattern for s in specs}) == len(PATTERNS)
    held = [sample_spec(rng, allow_held_out=True) for _ in range(400)]
    assert any(is_held_out(s) for s in held)


def test_sample_spec_simple():
    rng = np.random.default_rng(3)
    for _ in range(100):
        s = sample_spec(rng, simple=True)
        assert s.appearance.pattern == "solid" and s.appearance.bg_pattern == "plain"
        assert s.motion.dynamics == "none" and s.motion.speed == 1.0
        assert not is_held_out(s)


def test_sample_spec_deterministic():
    a = [sample_spec(np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_held_out_rule():
    assert is_held_out(_spec(shape="star", colour="orange"))  # appearance pair
    assert is_held_out(
        _spec(shape="star", colour="blue", family="figure_eight", direction=None)
    )  # motion pair
    assert not is_held_out(_spec(shape="star", colour="blue", family="linear"))


def test_concepts():
    assert len(CONCEPTS) >= 8
    pairs = set()
    for name, c in CONCEPTS.items():
        a, m = c.appearance, c.motion
        assert (a.colour, a.shape) in syn.HELD_OUT_APPEARANCE, name
        assert (a.shape, m.family) in syn.HELD_OUT_MOTION, name
        assert is_compatible(a), name
        pairs.add((a.colour, a.shape))
    assert len(pairs) == len(CONCEPTS)
    assert len({c.motion.family for c in CONCEPTS.values()}) >= 6
