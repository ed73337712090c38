"""Synthetic "toy world": videos of one sprite moving over a background, with known ground truth.

Everything is pure numpy and deterministic. A clip is described by a :class:`ConceptSpec`
(appearance + motion); :func:`render` draws it, :func:`trajectory` gives the true sprite centre per
frame, :func:`caption` describes it in one fixed grammar, and the ``detect_*`` functions recover the
attributes from pixels alone (used by :mod:`setseq.eval.toy_metrics` on generated videos).

Coordinates: ``(x, y)`` normalized to ``[0, 1]`` over the frame width / height, ``y`` pointing down.
Sprite ``size`` is the sprite diameter as a fraction of ``min(H, W)``.

Rules worth knowing: directions exist only for ``linear`` (8), ``bounce`` (left/right) and ``zigzag``
(left/right/up/down), see :data:`FAMILY_DIRECTIONS`; periodic families (circles, figure eight) use the
phase ``f / F`` (one revolution at speed 1, frame F would repeat frame 0), the others ``t = f / (F - 1)``;
``rotate`` = one clockwise turn over the clip, ``pulse`` = two shrink cycles (scale 0.7..1), ``blink`` =
hidden on frames 2, 5, 8, ...; sprite patterns are anchored to the sprite centre and never rotate.
Sprites stay in frame for the sampled ranges (size 0.30..0.40, speed 0.8..1.2); explicit larger values
may leave the frame.

Held-out rule (what the base model never sees in pre-training): a spec is held out when its
``(colour, shape)`` is in :data:`HELD_OUT_APPEARANCE` **or** its ``(shape, family)`` is in
:data:`HELD_OUT_MOTION`. Every entry of :data:`CONCEPTS` is held out on both counts. Both rules pair
with the shape, which the shipped toy model's 4x codec barely keeps at 32x32 (shape survives encode + decode
in ~22% of clips), so in practice the base model still draws several concepts' motion family from their
captions; which ones, measured, is in BENCHMARKS.md ("Demo").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BG_COLOURS",
    "BG_PATTERNS",
    "BG_SHADES",
    "COLOURS",
    "CONCEPTS",
    "DIRECTIONS",
    "DYNAMICS",
    "FAMILY_DIRECTIONS",
    "HELD_OUT_APPEARANCE",
    "HELD_OUT_MOTION",
    "MOTION_FAMILIES",
    "PATTERNS",
    "SHAPES",
    "SPRITE_SHADES",
    "Appearance",
    "ConceptSpec",
    "Motion",
    "caption",
    "caption_words",
    "detect_background",
    "detect_motion",
    "detect_sprite",
    "is_compatible",
    "is_held_out",
    "motion_phrase",
    "normalize_trajectory",
    "render",
    "render_mask",
    "sample_spec",
    "shape_mask",
    "trajectory",
]

# --------------------------------------------------------------------------------------------------
# Vocabulary of the world
# --------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 20),
    "purple": (140, 60, 190),
    "cyan": (40, 210, 220),
    "pink": (245, 130, 190),
}

PATTERNS: tuple[str, ...] = ("solid", "stripes", "checker", "dots")

BG_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": COLOURS["black"],
    "white": COLOURS["white"],
    "gray": (128, 128, 128),
    "blue": COLOURS["blue"],
    "green": COLOURS["green"],
    "yellow": COLOURS["yellow"],
    "purple": COLOURS["purple"],
}

BG_PATTERNS: tuple[str, ...] = ("plain", "stripes", "checker")

MOTION_FAMILIES: tuple[str, ...] = (
    "linear",
    "circle_cw",
    "circle_ccw",
    "bounce",
    "zigzag",
    "figure_eight",
    "spiral",
    "static",
)

DIRECTIONS: tuple[str, ...] = (
    "left",
    "right",
    "up",
    "down",
    "up-left",
    "up-right",
    "down-left",
    "down-right",
)

#: Directions each directional family can take (families not listed take ``direction=None``).
FAMILY_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "linear": DIRECTIONS,
    "bounce": ("left", "right"),
    "zigzag": ("left", "right", "up", "down"),
}

DYNAMICS: tuple[str, ...] = ("none", "rotate", "pulse", "blink")

_DIR_VEC: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
}

_PATTERN_WORD = {"solid": None, "stripes": "striped", "checker": "checkered", "dots": "dotted"}
_BG_PATTERN_WORD = {"plain": None, "stripes": "striped", "checker": "checkered"}
_DYNAMICS_WORD = {"none": None, "rotate": "spinning", "pulse": "pulsing", "blink": "blinking"}

# Sampling ranges (sample_spec) and geometry constants (trajectory / render).
SIZE_RANGE = (0.30, 0.40)
SPEED_RANGE = (0.80, 1.20)
SIMPLE_SIZE = 0.35
LINEAR_TRAVEL = 0.45  # distance travelled over the clip at speed 1 (linear, bounce, zigzag)
CIRCLE_RADIUS = 0.20
BOUNCE_HEIGHT = 0.20
ZIGZAG_AMPLITUDE = 0.12
FIG8_AMPLITUDE = (0.25, 0.12)
SPIRAL_RADIUS = 0.22
MIN_COLOUR_DISTANCE = 90.0  # sprite colours vs background colours (RGB euclidean), see is_compatible

# --------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Appearance:
    """How the sprite and background look."""

    shape: str = "circle"
    colour: str = "red"
    pattern: str = "solid"
    size: float = 0.35
    bg_colour: str = "black"
    bg_pattern: str = "plain"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; expected one of {PATTERNS}")
        if self.bg_colour not in BG_COLOURS:
            raise ValueError(f"unknown bg_colour {self.bg_colour!r}; expected one of {tuple(BG_COLOURS)}")
        if self.bg_pattern not in BG_PATTERNS:
            raise ValueError(f"unknown bg_pattern {self.bg_pattern!r}; expected one of {BG_PATTERNS}")
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"size must be in (0, 1], got {self.size}")


@dataclass(frozen=True)
class Motion:
    """How the sprite moves (``family``, ``direction``, ``speed``) and changes in place (``dynamics``)."""

    family: str = "linear"
    direction: str | None = "right"
    speed: float = 1.0
    dynamics: str = "none"

    def __post_init__(self) -> None:
        if self.family not in MOTION_FAMILIES:
            raise ValueError(f"unknown motion family {self.family!r}; expected one of {MOTION_FAMILIES}")
        allowed = FAMILY_DIRECTIONS.get(self.family)
        if allowed is None:
            if self.direction is not None:
                raise ValueError(f"family {self.family!r} takes no direction, got {self.direction!r}")
        elif self.direction not in allowed:
            raise ValueError(f"family {self.family!r} needs a direction in {allowed}, got {self.direction!r}")
        if self.dynamics not in DYNAMICS:
            raise ValueError(f"unknown dynamics {self.dynamics!r}; expected one of {DYNAMICS}")
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")


@dataclass(frozen=True)
class ConceptSpec:
    """A full clip description. ``start`` is the normalized centre at frame 0 (None: path centred)."""

    appearance: Appearance
    motion: Motion
    start: tuple[float, float] | None = None


# --------------------------------------------------------------------------------------------------
# Held-out combinations and named concepts
# --------------------------------------------------------------------------------------------------

#: (colour, shape) pairs never shown to the base model.
HELD_OUT_APPEARANCE: frozenset[tuple[str, str]] = frozenset(
    {
        ("orange", "star"),
        ("purple", "triangle"),
        ("pink", "cross"),
        ("cyan", "diamond"),
        ("yellow", "square"),
        ("green", "circle"),
        ("red", "star"),
        ("white", "cross"),
        ("blue", "diamond"),
        ("black", "triangle"),
    }
)

#: (shape, motion family) pairs never shown to the base model.
HELD_OUT_MOTION: frozenset[tuple[str, str]] = frozenset(
    {
        ("star", "figure_eight"),
        ("triangle", "spiral"),
        ("cross", "zigzag"),
        ("diamond", "bounce"),
        ("square", "circle_ccw"),
        ("circle", "circle_cw"),
        ("star", "bounce"),
        ("cross", "circle_cw"),
        ("diamond", "static"),
        ("triangle", "figure_eight"),
    }
)


def is_held_out(spec: ConceptSpec) -> bool:
    """True when (colour, shape) is in HELD_OUT_APPEARANCE or (shape, family) is in HELD_OUT_MOTION."""
    a, m = spec.appearance, spec.motion
    return (a.colour, a.shape) in HELD_OUT_APPEARANCE or (a.shape, m.family) in HELD_OUT_MOTION


def _spec(shape, colour, pattern, bg, bg_pattern, family, direction, dynamics="none", size=0.36, speed=1.0):
    return ConceptSpec(
        Appearance(shape, colour, pattern, size, bg, bg_pattern), Motion(family, direction, speed, dynamics)
    )


#: Named dynamic concepts; each is held out on both appearance and motion.
CONCEPTS: dict[str, ConceptSpec] = {
    "orange_star_figure8": _spec(
        "star", "orange", "solid", "black", "plain", "figure_eight", None, size=0.38
    ),
    "purple_triangle_spiral": _spec(
        "triangle", "purple", "solid", "blue", "plain", "spiral", None, "pulse", size=0.38
    ),
    "pink_cross_zigzag": _spec("cross", "pink", "checker", "blue", "plain", "zigzag", "right"),
    "cyan_diamond_bounce": _spec("diamond", "cyan", "solid", "black", "stripes", "bounce", "left"),
    "yellow_square_circling": _spec(
        "square", "yellow", "dots", "purple", "plain", "circle_ccw", None, "pulse"
    ),
    "green_circle_blinking": _spec("circle", "green", "dots", "white", "stripes", "circle_cw", None, "blink"),
    "red_star_bounce": _spec("star", "red", "solid", "gray", "plain", "bounce", "right", "rotate", size=0.38),
    "white_cross_circling": _spec("cross", "white", "stripes", "purple", "plain", "circle_cw", None),
    "blue_diamond_spinning": _spec("diamond", "blue", "dots", "gray", "checker", "static", None, "rotate"),
    "black_triangle_figure8": _spec(
        "triangle", "black", "solid", "yellow", "stripes", "figure_eight", None, size=0.38
    ),
}

# --------------------------------------------------------------------------------------------------
# Colours: pattern shades and compatibility
# --------------------------------------------------------------------------------------------------


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Second colour of a sprite pattern: half intensity (black / white get dark / light grey)."""
    if rgb == COLOURS["black"]:
        return (95, 95, 95)
    if rgb == COLOURS["white"]:
        return (150, 150, 150)
    return tuple(int(round(0.5 * c)) for c in rgb)  # type: ignore[return-value]


def _bg_shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Second colour of a background pattern: low contrast (25% towards white or black)."""
    lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0
    target = 255.0 if lum < 0.4 else 0.0
    return tuple(int(round(0.75 * c + 0.25 * target)) for c in rgb)  # type: ignore[return-value]


SPRITE_SHADES: dict[str, tuple[int, int, int]] = {k: _shade(v) for k, v in COLOURS.items()}
BG_SHADES: dict[str, tuple[int, int, int]] = {k: _bg_shade(v) for k, v in BG_COLOURS.items()}


def _dist(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def is_compatible(appearance: Appearance) -> bool:
    """True when every sprite colour in use is >= MIN_COLOUR_DISTANCE from every background colour in use."""
    sprite = [COLOURS[appearance.colour]]
    if appearance.pattern != "solid":
        sprite.append(SPRITE_SHADES[appearance.colour])
    bg = [BG_COLOURS[appearance.bg_colour]]
    if appearance.bg_pattern != "plain":
        bg.append(BG_SHADES[appearance.bg_colour])
    return all(_dist(s, b) >= MIN_COLOUR_DISTANCE for s in sprite for b in bg)


# --------------------------------------------------------------------------------------------------
# Motion: ground-truth trajectories
# --------------------------------------------------------------------------------------------------


def _raw_path(motion: Motion, t: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Path offsets (N, 2) before translation. ``t`` in [0, 1] over the clip; ``phase`` = f / F (periodic)."""
    fam, s = motion.family, motion.speed
    if fam == "static":
        return np.zeros((len(t), 2))
    if fam in ("linear", "bounce", "zigzag"):
        d = np.asarray(_DIR_VEC[motion.direction])  # type: ignore[index]
        perp = np.array([d[1], -d[0]])  # for left/right: perp points up (negative y)
        if fam == "bounce" and d[0] < 0:
            perp = -perp
        along = LINEAR_TRAVEL * s * t
        if fam == "linear":
            off = np.zeros_like(t)
        elif fam == "bounce":  # two hops upward
            off = BOUNCE_HEIGHT * np.abs(np.sin(2.0 * math.pi * t))
        else:  # zigzag: 1.5 periods of a triangle wave, starting and ending on the centre line
            u = (1.5 * t) % 1.0
            off = ZIGZAG_AMPLITUDE * np.where(u < 0.25, 4 * u, np.where(u < 0.75, 2 - 4 * u, 4 * u - 4))
        return along[:, None] * d[None, :] + off[:, None] * perp[None, :]
    if fam in ("circle_cw", "circle_ccw"):  # starts at the top; clockwise on screen (y down)
        sign = 1.0 if fam == "circle_cw" else -1.0
        ang = -0.5 * math.pi + sign * 2.0 * math.pi * s * phase
        return CIRCLE_RADIUS * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if fam == "figure_eight":  # horizontal lemniscate-like Lissajous curve
        a = 2.0 * math.pi * s * phase
        return np.stack([FIG8_AMPLITUDE[0] * np.sin(a), FIG8_AMPLITUDE[1] * np.sin(2 * a)], axis=1)
    if fam == "spiral":  # inward, clockwise, 1.25 turns at speed 1
        ang = -0.5 * math.pi + 2.0 * math.pi * 1.25 * s * t
        r = SPIRAL_RADIUS * (1.0 - 0.7 * t)
        return r[:, None] * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    raise ValueError(f"unknown motion family {fam!r}")


def _times(frames: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.arange(frames, dtype=float)
    t = f / (frames - 1) if frames > 1 else np.zeros(1)
    return t, f / frames


def trajectory(spec: ConceptSpec, frames: int) -> np.ndarray:
    """True sprite centre per frame, (F, 2) of normalized (x, y); the ground truth :func:`render` uses.

    With ``start=None`` the continuous path's bounding box is centred in the frame (independent of F);
    otherwise the path is translated so that frame 0 is at ``start``.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    t, phase = _times(frames)
    path = _raw_path(spec.motion, t, phase)
    if spec.start is not None:
        origin = _raw_path(spec.motion, np.zeros(1), np.zeros(1))[0]
        return path - origin + np.asarray(spec.start, float)
    dense_t = np.linspace(0.0, 1.0, 513)
    dense = _raw_path(spec.motion, dense_t, dense_t)
    centre = 0.5 * (dense.min(axis=0) + dense.max(axis=0))
    return path - centre + 0.5


def _dynamics(motion: Motion, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame (angle in radians, scale factor, visible flag)."""
    f = np.arange(frames, dtype=float)
    angle = np.zeros(frames)
    scale = np.ones(frames)
    visible = np.ones(frames, dtype=bool)
    if motion.dynamics == "rotate":  # one clockwise revolution over the clip
        angle = 2.0 * math.pi * f / frames
    elif motion.dynamics == "pulse":  # two shrink-and-grow cycles, scale in [0.7, 1]
        scale = 1.0 - 0.15 * (1.0 - np.cos(2.0 * math.pi * 2.0 * f / frames))
    elif motion.dynamics == "blink":  # hidden on every third frame (frames 2, 5, 8, ...)
        visible = (np.arange(frames) % 3) != 2
    return angle, scale, visible


# --------------------------------------------------------------------------------------------------
# Shapes (unit: sprite diameter; centroid at the origin; y down)
# --------------------------------------------------------------------------------------------------

_TRIANGLE = np.array(
    [[0.0, -0.55], [0.55 * math.cos(math.pi / 6), 0.275], [-0.55 * math.cos(math.pi / 6), 0.275]]
)
_STAR = np.array(
    [
        [
            (0.55 if k % 2 == 0 else 0.24) * math.cos(-0.5 * math.pi + k * math.pi / 5),
            (0.55 if k % 2 == 0 else 0.24) * math.sin(-0.5 * math.pi + k * math.pi / 5),
        ]
        for k in range(10)
    ]
)


def _in_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    inside = np.zeros(np.broadcast(u, v).shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        cond = (y1 > v) != (y2 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= cond & (u < xint)
    return inside


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean inside-test of ``shape`` at unit coordinates (u, v) (sprite diameter = 1)."""
    if shape == "circle":
        return u * u + v * v <= 0.25
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.38
    if shape == "diamond":
        return np.abs(u) / 0.32 + np.abs(v) / 0.52 <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.16) & (av <= 0.48)) | ((av <= 0.16) & (au <= 0.48))
    if shape == "triangle":
        return _in_polygon(u, v, _TRIANGLE)
    if shape == "star":
        return _in_polygon(u, v, _STAR)
    raise ValueError(f"unknown shape {shape!r}")


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def render(
    spec: ConceptSpec,
    frames: int = 9,
    size: int | tuple[int, int] = 32,
    seed: int = 0,
    noise: float = 0.0,
) -> np.ndarray:
    """Draw ``spec`` as a (F, H, W, 3) uint8 video. ``size`` is S or (H, W).

    ``seed`` shifts the background pattern phase and seeds the optional Gaussian pixel ``noise``
    (std in 0..255 units); the same inputs always give the same output.
    """
    return _render(spec, frames, size, seed, noise)[0]


def render_mask(spec: ConceptSpec, frames: int = 9, size: int | tuple[int, int] = 32) -> np.ndarray:
    """The sprite's exact mask in :func:`render`'s video of ``spec``: (F, H, W) bool (False where hidden)."""
    return _render(spec, frames, size, 0, 0.0)[1]


def _render(
    spec: ConceptSpec, frames: int, size: int | tuple[int, int], seed: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    h, w = _hw(size)
    if h < 4 or w < 4:
        raise ValueError(f"frame size too small: {(h, w)}")
    rng = np.random.default_rng(seed)
    a = spec.appearance
    m = min(h, w)
    ys, xs = np.mgrid[0:h, 0:w]
    px, py = xs + 0.5, ys + 0.5

    # background
    bw = max(2, int(round(m / 8)))
    ox, oy = (int(v) for v in rng.integers(0, 2 * bw, size=2))
    bg_base = np.asarray(BG_COLOURS[a.bg_colour], np.float32)
    bg_alt = np.asarray(BG_SHADES[a.bg_colour], np.float32)
    if a.bg_pattern == "stripes":  # vertical stripes
        bg_sel = ((xs + ox) // bw) % 2 == 1
    elif a.bg_pattern == "checker":
        bg_sel = (((xs + ox) // bw) + ((ys + oy) // bw)) % 2 == 1
    else:
        bg_sel = np.zeros((h, w), dtype=bool)
    background = np.where(bg_sel[..., None], bg_alt, bg_base)

    pos = trajectory(spec, frames)
    angle, scale, visible = _dynamics(spec.motion, frames)
    base = np.asarray(COLOURS[a.colour], np.float32)
    alt = np.asarray(SPRITE_SHADES[a.colour], np.float32)
    pw = max(1, int(round(m / 16)))  # sprite pattern cell size in pixels

    video = np.empty((frames, h, w, 3), np.float32)
    masks = np.zeros((frames, h, w), bool)
    for f in range(frames):
        frame = background.copy()
        if visible[f]:
            cx, cy = pos[f, 0] * w, pos[f, 1] * h
            s = a.size * m * scale[f]
            du, dv = (px - cx) / s, (py - cy) / s
            c, sn = math.cos(angle[f]), math.sin(angle[f])
            u, v = c * du + sn * dv, -sn * du + c * dv  # rotate pixel into sprite frame
            inside = shape_mask(a.shape, u, v)
            # pattern is anchored to the sprite centre (translates with it, never rotates)
            dx = xs - int(math.floor(cx))
            dy = ys - int(math.floor(cy))
            if a.pattern == "stripes":  # horizontal stripes
                sel = ((dy + pw // 2) // pw) % 2 == 1
            elif a.pattern == "checker":
                sel = (((dx + pw // 2) // pw) + ((dy + pw // 2) // pw)) % 2 == 1
            elif a.pattern == "dots":
                sel = (((dx + pw // 2) % (2 * pw)) >= pw) & (((dy + pw // 2) % (2 * pw)) >= pw)
            else:
                sel = np.zeros((h, w), dtype=bool)
            colour = np.where(sel[..., None], alt, base)
            frame = np.where(inside[..., None], colour, frame)
            masks[f] = inside
        video[f] = frame
    if noise > 0:
        video = video + rng.normal(0.0, noise, size=video.shape).astype(np.float32)
    return np.clip(np.round(video), 0, 255).astype(np.uint8), masks


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

_DIR_PHRASE = {
    "left": "left",
    "right": "right",
    "up": "up",
    "down": "down",
    "up-left": "up and left",
    "up-right": "up and right",
    "down-left": "down and left",
    "down-right": "down and right",
}


def motion_phrase(motion: Motion) -> str:
    """The motion part of a caption, e.g. "moving up and left while spinning"."""
    fam = motion.family
    if fam == "linear":
        text = f"moving {_DIR_PHRASE[motion.direction]}"  # type: ignore[index]
    elif fam == "bounce":
        text = f"bouncing {_DIR_PHRASE[motion.direction]}"  # type: ignore[index]
    elif fam == "zigzag":
        text = f"zigzagging {_DIR_PHRASE[motion.direction]}"  # type: ignore[index]
    else:
        text = {
            "circle_cw": "circling clockwise",
            "circle_ccw": "circling counterclockwise",
            "figure_eight": "tracing a figure eight",
            "spiral": "spiraling",
            "static": "standing still",
        }[fam]
    dyn = _DYNAMICS_WORD[motion.dynamics]
    return f"{text} while {dyn}" if dyn else text


def caption(spec: ConceptSpec, *, with_pattern: bool = True, with_bg_pattern: bool = True) -> str:
    """One-grammar caption: "a {colour} [{pattern}] {shape} {motion} on a {bg} [{bg pattern}] background"."""
    a = spec.appearance
    words = ["a", a.colour]
    if with_pattern and _PATTERN_WORD[a.pattern]:
        words.append(_PATTERN_WORD[a.pattern])
    words += [a.shape, motion_phrase(spec.motion), "on", "a", a.bg_colour]
    if with_bg_pattern and _BG_PATTERN_WORD[a.bg_pattern]:
        words.append(_BG_PATTERN_WORD[a.bg_pattern])
    words.append("background")
    return " ".join(words)


def caption_words() -> list[str]:
    """Sorted list of every word a caption can contain, plus personalization extras."""
    words = {"a", "on", "background", "while", "sks", "in", "motion", ",", "."}
    words |= set(COLOURS) | set(BG_COLOURS) | set(SHAPES)
    words |= {w for w in _PATTERN_WORD.values() if w} | {w for w in _BG_PATTERN_WORD.values() if w}
    words |= {w for w in _DYNAMICS_WORD.values() if w}
    for phrase in _DIR_PHRASE.values():
        words |= set(phrase.split())
    for fam in MOTION_FAMILIES:
        for d in FAMILY_DIRECTIONS.get(fam, (None,)):
            words |= set(motion_phrase(Motion(fam, d)).split())
    return sorted(words)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, items) -> str:
    items = tuple(items)
    return items[int(rng.integers(len(items)))]


def sample_spec(
    rng: np.random.Generator, *, allow_held_out: bool = False, simple: bool = False
) -> ConceptSpec:
    """Random compatible spec (never held out unless ``allow_held_out``).

    ``simple`` restricts to solid sprites, plain backgrounds, no dynamics, speed 1 and size 0.35.
    """
    for _ in range(10_000):
        shape = _choice(rng, SHAPES)
        colour = _choice(rng, COLOURS)
        bg = _choice(rng, BG_COLOURS)
        fam = _choice(rng, MOTION_FAMILIES)
        direction = _choice(rng, FAMILY_DIRECTIONS[fam]) if fam in FAMILY_DIRECTIONS else None
        if simple:
            pattern, bg_pattern, dynamics, speed, size = "solid", "plain", "none", 1.0, SIMPLE_SIZE
        else:
            pattern = _choice(rng, PATTERNS)
            bg_pattern = _choice(rng, BG_PATTERNS)
            dynamics = _choice(rng, DYNAMICS)
            speed = round(float(rng.uniform(*SPEED_RANGE)), 3)
            size = round(float(rng.uniform(*SIZE_RANGE)), 3)
        spec = ConceptSpec(
            Appearance(shape, colour, pattern, size, bg, bg_pattern), Motion(fam, direction, speed, dynamics)
        )
        if not is_compatible(spec.appearance):
            continue
        if not allow_held_out and is_held_out(spec):
            continue
        return spec
    raise RuntimeError("could not sample a compatible spec")  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------


_MASK_THRESHOLD = 0.45 * MIN_COLOUR_DISTANCE
_STATIC_SPREAD = 0.03  # RMS spread (normalized units) below which a trajectory counts as static
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
    contrast = min(_dist(a, b) for a in sprite_rgb for b in bg_rgb)
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
    if spread < _STATIC_SPREAD:
        return {"family": "static", "direction": None, "speed": None, "distance": 0.0}
    q = normalize_trajectory(p[ok])
    labels, paths = _motion_templates(len(p))
    t = paths[:, ok] - paths[:, ok].mean(axis=1, keepdims=True)
    t = t / np.sqrt((t**2).sum(axis=2).mean(axis=1))[:, None, None]
    dist = np.sqrt(((t - q) ** 2).sum(axis=2)).mean(axis=1)
    i = int(dist.argmin())
    best = (*labels[i], float(dist[i]))
    return {"family": best[0], "direction": best[1], "speed": best[2], "distance": best[3]}
