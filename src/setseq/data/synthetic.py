"""Synthetic "toy world": videos of one sprite moving over a background, with known ground truth.

Everything is pure numpy and deterministic. A clip is described by a :class:`ConceptSpec`
(appearance + motion); :func:`render` draws it, :func:`trajectory` gives the true sprite centre per
frame, :func:`caption` describes it in one fixed grammar. The detectors that recover the attributes from
pixels alone, for scoring generated videos, are in :mod:`setseq.eval.toy_detect`.

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
    "colour_distance",
    "is_compatible",
    "is_held_out",
    "motion_phrase",
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


def colour_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Euclidean distance of two RGB colours (0..255 a channel)."""
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def is_compatible(appearance: Appearance) -> bool:
    """True when every sprite colour in use is >= MIN_COLOUR_DISTANCE from every background colour in use."""
    sprite = [COLOURS[appearance.colour]]
    if appearance.pattern != "solid":
        sprite.append(SPRITE_SHADES[appearance.colour])
    bg = [BG_COLOURS[appearance.bg_colour]]
    if appearance.bg_pattern != "plain":
        bg.append(BG_SHADES[appearance.bg_colour])
    return all(colour_distance(s, b) >= MIN_COLOUR_DISTANCE for s in sprite for b in bg)


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
