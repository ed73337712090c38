"""Edits that must keep the concept: a per-concept edit suite of the toy world, and its scores.

The paper scores identity (ID) and edit adherence (C-T) on the *same* edited videos: the method's claim is
that the concept is kept *while* the edit is followed. An edit that replaces the concept with something else
follows the prompt perfectly, so adherence alone cannot see a lost concept. Every edited video is therefore
scored for:

- ``adherence``: the fraction of the requested attributes detected (background colour / pattern, motion);
  ``followed`` when all of them are;
- ``identity``: appearance fidelity to the reference (colour, shape, pattern, in thirds), the stand-in for ID;
- ``kept``: the concept is still there: the sprite's colour is the concept's, and so is its shape, where the
  run's own reproduction draws that shape (the toy model's 4x codec loses shape in most clips, so a shape the
  run cannot draw even unedited is not held against an edit);
- ``colour_kept``: the sprite's colour alone is the concept's (shown beside ``kept``: on the toy model's
  blurry 32x32 sprites the shape classifier is the noisier half of ``kept``);
- ``motion``: trajectory similarity to the reference, on the edits that keep the motion (new backgrounds);
- ``success``: followed **and** kept.

The suite (:func:`edit_suite`) has 8 edits in 4 kinds, fixed per concept: 3 plain backgrounds, 2 patterned
backgrounds, 2 other motions and 1 context (a new background and a new motion at once). Backgrounds are chosen
among those the concept's colour stays visible on.

For a given run, every edit falls in one of three groups (:func:`edit_group`, issue #29): "seen" (its background
is a colour the run's training composited the concept onto, :func:`composited_colours`: reported, never counted
as success in the headline), "unseen" (a new plain or patterned background) and "motion" (other motions and the
context edit, on a background training never composited). :func:`summarize_groups` gives each group's figures
beside the base model's own on the same edits (its ceiling, `setseq.tools.ceiling`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from setseq.data.masks import SWAP_COLOURS
from setseq.data.synthetic import (
    BG_COLOURS,
    BG_SHADES,
    HELD_OUT_MOTION,
    ConceptSpec,
    Motion,
    colour_distance,
    is_compatible,
    motion_phrase,
)
from setseq.eval import toy_metrics as M
from setseq.eval.toy_detect import _MASK_THRESHOLD, detect_sprite

__all__ = [
    "COLOUR_TOLERANCE",
    "EDIT_GROUPS",
    "EDIT_KINDS",
    "Edit",
    "background_seen",
    "ceiling_share",
    "composited_palette",
    "edit_backgrounds",
    "edit_group",
    "edit_suite",
    "group_edits",
    "judge_kept",
    "score_edit",
    "shape_reproduced",
    "summarize_edits",
    "summarize_groups",
    "target_spec",
]

EDIT_KINDS: tuple[str, ...] = ("background", "pattern", "motion", "context")
#: The groups an edit falls in for a run (`edit_group`); "seen" is reported but never a success.
EDIT_GROUPS: tuple[str, ...] = ("seen", "unseen", "motion")
#: Two colours closer than this (RGB euclidean) are one colour to the toy detector: it is the threshold below
#: which `setseq.eval.toy_detect` reads a pixel as the background colour (taken from it, not restated).
COLOUR_TOLERANCE: float = _MASK_THRESHOLD
#: Background colours in the order the suite takes them (white first: the demo's historic edit).
_BG_ORDER = ("white", "green", "yellow", "gray", "blue", "purple", "black")
_PATTERN_WORD = {"stripes": "striped", "checker": "checkered"}


@dataclass(frozen=True)
class Edit:
    """One edit prompt of a concept's suite and what it asks for."""

    name: str
    kind: str  # one of EDIT_KINDS
    prompt: str
    requested: dict[str, Any] = field(default_factory=dict)  # attributes the edited video must show
    motion_scale: float = 1.0  # 0 where the edit replaces the motion (the motion residual would fight it)
    keeps_motion: bool = True  # the concept's own motion is expected (scored against the reference)


def _backgrounds(spec: ConceptSpec, pattern: str = "plain") -> list[str]:
    """Background colours, not the concept's own, on which every colour of the sprite stays visible with this
    background pattern."""
    a = spec.appearance
    return [
        bg
        for bg in _BG_ORDER
        if bg in BG_COLOURS
        and bg != a.bg_colour
        and is_compatible(dataclasses.replace(a, bg_colour=bg, bg_pattern=pattern))
    ]


def _new_motions(spec: ConceptSpec) -> list[Motion]:
    """Two motions that are not the concept's: a straight line, and a circle or zigzag the base model has
    seen with this shape (not a held-out (shape, family) pair)."""
    own = spec.motion
    line = Motion("linear", "left" if not (own.family == "linear" and own.direction == "left") else "right")
    shape = spec.appearance.shape
    for m in (Motion("circle_cw", None), Motion("circle_ccw", None), Motion("zigzag", "up")):
        if m.family != own.family and (shape, m.family) not in HELD_OUT_MOTION:
            return [line, m]
    return [line, Motion("linear", "up")]


def edit_suite(token: str, motion_token: str, shape: str, spec: ConceptSpec) -> list[Edit]:
    """The concept's 8 edits (3 plain backgrounds, 2 patterned, 2 motions, 1 context), fixed for a spec."""
    t_static = f"a {token} {shape}"
    t_motion = f"{t_static} in {motion_token} motion"
    bgs = _backgrounds(spec)
    if len(bgs) < 3:  # every shipped concept has at least 4; a user-made one might not
        raise ValueError(f"the concept's colour is visible on only {len(bgs)} background colours")
    edits = [
        Edit(f"background_{bg}", "background", f"{t_motion} on a {bg} background", {"bg_colour": bg})
        for bg in bgs[:3]
    ]
    patterned = _backgrounds(
        spec, "checker"
    )  # the pattern's second shade must stay apart from the sprite too
    patterned = patterned if len(patterned) >= 2 else bgs
    for bg, pattern in ((patterned[0], "checker"), (patterned[1], "stripes")):
        edits.append(
            Edit(
                f"pattern_{bg}_{pattern}",
                "pattern",
                f"{t_motion} on a {bg} {_PATTERN_WORD[pattern]} background",
                {"bg_colour": bg, "bg_pattern": pattern},
            )
        )
    motions = _new_motions(spec)
    for m in motions:
        phrase = motion_phrase(m)
        edits.append(
            Edit(
                f"motion_{phrase.replace(' ', '_')}",
                "motion",
                f"{t_static} {phrase}",
                {"family": m.family, **({"direction": m.direction} if m.direction else {})},
                motion_scale=0.0,
                keeps_motion=False,
            )
        )
    m, bg = motions[0], bgs[2]
    edits.append(
        Edit(
            f"context_{bg}_{motion_phrase(m).replace(' ', '_')}",
            "context",
            f"{t_static} {motion_phrase(m)} on a {bg} background",
            {"bg_colour": bg, "family": m.family, **({"direction": m.direction} if m.direction else {})},
            motion_scale=0.0,
            keeps_motion=False,
        )
    )
    return edits


def edit_backgrounds(spec: ConceptSpec) -> list[str]:
    """The background colours the concept's edit suite asks for (plain, patterned and in context): what a
    fair evaluation keeps out of training (`stageN.background_swap` composites), so that a kept concept
    means a concept that survives a background it never saw."""
    names = [e.requested.get("bg_colour") for e in edit_suite("sks", "zwx", spec.appearance.shape, spec)]
    return sorted({n for n in names if n})


def target_spec(spec: ConceptSpec, edit: Edit) -> ConceptSpec:
    """What the edited video should show: the concept with the edit's requested attributes (ground truth)."""
    r = edit.requested
    a = spec.appearance
    if "bg_colour" in r:
        a = dataclasses.replace(a, bg_colour=r["bg_colour"], bg_pattern=r.get("bg_pattern", "plain"))
    m = spec.motion
    if "family" in r:
        m = Motion(r["family"], r.get("direction"), m.speed, m.dynamics)
    return ConceptSpec(a, m, spec.start if m == spec.motion else None)


def shape_reproduced(reproduction: np.ndarray, spec: ConceptSpec) -> bool:
    """Whether a run's unedited reproduction shows the concept's shape (`kept` counts the shape only then)."""
    return detect_sprite(reproduction)["shape"] == spec.appearance.shape


def score_edit(
    video: np.ndarray,
    edit: Edit,
    reference: np.ndarray,
    spec: ConceptSpec,
    *,
    shape_reproduced: bool,
) -> dict[str, Any]:
    """Scores of one edited video (uint8 (F, H, W, 3)): adherence, followed, identity, kept, motion, success.

    ``reference`` is the concept's video, ``spec`` its ground truth, ``shape_reproduced`` whether the run's
    unedited reproduction shows the concept's shape (see the module's docstring for ``kept``)."""
    adherence = M.edit_adherence(video, edit.requested)
    got = detect_sprite(video)
    motion = float(M.sprite_motion_fidelity(video, reference)["similarity"]) if edit.keeps_motion else None
    score = {
        "kind": edit.kind,
        "prompt": edit.prompt,
        "adherence": float(adherence),
        "followed": bool(adherence >= 1.0 - 1e-9),
        "identity": float(M.appearance_fidelity(video, reference)),
        "motion": motion,
        "detected": {"colour": got["colour"], "shape": got["shape"], "bg_colour": got["bg_colour"]},
    }
    return judge_kept(score, spec, shape_reproduced=shape_reproduced)


def judge_kept(score: Mapping[str, Any], spec: ConceptSpec, *, shape_reproduced: bool) -> dict[str, Any]:
    """`score` (with "followed" and the "detected" colour and shape) with ``kept``, ``colour_kept`` and
    ``success`` judged from its detections, the shape counted only where ``shape_reproduced``: how the bench
    judges a base-model ceiling by the run's own rule, so that both sides of a comparison use the same one."""
    got, a = score["detected"], spec.appearance
    colour_ok = got["colour"] == a.colour
    kept = bool(colour_ok and (got["shape"] == a.shape or not shape_reproduced))
    return {
        **score,
        "kept": kept,
        "colour_kept": bool(colour_ok),
        "success": bool(score["followed"] and kept),
    }


def summarize_edits(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One run's edit figures from {edit name: score_edit(...)}: means over every edit, and per kind.

    ``edit`` = mean adherence, ``followed`` / ``kept`` / ``success`` = fractions of edits, ``edit_id`` = mean
    identity, ``edit_motion`` = mean motion similarity over the edits that keep the motion (nan if none)."""
    vals = list(scores.values())

    def frac(key: str, rows: list[dict]) -> float:
        return float(np.mean([bool(r[key]) for r in rows])) if rows else float("nan")

    motions = [r["motion"] for r in vals if r["motion"] is not None]
    out: dict[str, Any] = {
        "edit": float(np.mean([r["adherence"] for r in vals])),
        "edit_id": float(np.mean([r["identity"] for r in vals])),
        "followed": frac("followed", vals),
        "kept": frac("kept", vals),
        "colour_kept": frac("colour_kept", vals) if all("colour_kept" in r for r in vals) else float("nan"),
        "success": frac("success", vals),
        "edit_motion": float(np.mean(motions)) if motions else float("nan"),
    }
    out["kinds"] = {
        kind: {k: frac(k, [r for r in vals if r["kind"] == kind]) for k in ("followed", "kept", "success")}
        for kind in EDIT_KINDS
        if any(r["kind"] == kind for r in vals)
    }
    return out


# --------------------------------------------------------------------------------------------------
# Groups: seen backgrounds, unseen backgrounds, motion (issue #29)

RGB = tuple[int, int, int]


def composited_palette(swap_backgrounds: Iterable[str], swap_rates: Iterable[float]) -> list[str]:
    """The plain colours a run's training composited the concept onto, from its `data.swap_backgrounds` and
    the `background_swap` rates of its stages as its method runs them (`setseq.tools.ceiling.composited_colours`
    reads both from a config): the whole palette when any rate is above 0, else none.

    The whole palette counts, even a colour `swap_colours_for` skipped as too close to the subject: counting
    too much as seen can only shrink "unseen", never let a trained colour into it."""
    return list(swap_backgrounds) if any(r > 0 for r in swap_rates) else []


def _rgb(colour: str | RGB) -> RGB:
    if isinstance(colour, str):
        if colour not in SWAP_COLOURS:
            raise ValueError(f"unknown composite colour {colour!r}; expected one of {tuple(SWAP_COLOURS)}")
        return SWAP_COLOURS[colour]
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def background_seen(bg_colour: str, bg_pattern: str, composited: Iterable[str | RGB]) -> bool:
    """Whether a background (a `BG_COLOURS` name and pattern) shows a colour training composited onto: one of
    its colours (the base, and the pattern's second shade) within `COLOUR_TOLERANCE` of a composited colour
    (a `SWAP_COLOURS` name or an RGB triple, e.g. a random composite colour)."""
    mine = [BG_COLOURS[bg_colour]] + ([BG_SHADES[bg_colour]] if bg_pattern != "plain" else [])
    return any(colour_distance(a, _rgb(c)) < COLOUR_TOLERANCE for c in composited for a in mine)


def edit_group(edit: Edit, composited: Collection[str | RGB]) -> str:
    """The edit's group for a run that composited onto `composited` (`composited_palette`): "seen" when its
    background is one of them (any kind of edit), else "unseen" for a background edit and "motion" for a
    motion or context edit."""
    bg = edit.requested.get("bg_colour")
    if bg is not None and background_seen(bg, edit.requested.get("bg_pattern", "plain"), composited):
        return "seen"
    return "unseen" if edit.kind in ("background", "pattern") else "motion"


def group_edits(edits: Iterable[Edit], composited: Collection[str | RGB]) -> dict[str, str]:
    """{edit name: group} for a run that composited onto `composited` (see `edit_group`)."""
    return {e.name: edit_group(e, composited) for e in edits}


_GROUP_FIGURES = ("followed", "kept", "colour_kept", "success")


def summarize_groups(
    scores: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, str],
    ceiling: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per group (`EDIT_GROUPS`, those with edits): the edit count `n`, the shares followed / kept / colour
    kept / success, and beside each the base model's share on the same edits (`ceiling_*`, from its scores
    {edit name: score}; None where the ceiling lacks an edit of the group). Shares are None for no edits."""

    def share(rows: list[Mapping[str, Any]], key: str) -> float | None:
        return float(np.mean([bool(r[key]) for r in rows])) if rows else None

    out: dict[str, dict[str, Any]] = {}
    for g in EDIT_GROUPS:
        names = [n for n, group in groups.items() if group == g and n in scores]  # (in the suite's order)
        if not names:
            continue
        mine = [scores[n] for n in names]
        entry: dict[str, Any] = {"n": len(names), "edits": names}
        entry |= {k: share(mine, k) for k in _GROUP_FIGURES}
        base = [ceiling[n] for n in names if ceiling is not None and n in ceiling]
        full = len(base) == len(names)
        entry |= {f"ceiling_{k}": share(base, k) if full else None for k in _GROUP_FIGURES}
        out[g] = entry
    return out


def ceiling_share(groups: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The headline of one run: success on unseen backgrounds as a share of the base model's success on the
    same edits. None when there are no unseen edits, no ceiling, or the base model succeeds on none."""
    u = groups.get("unseen")
    if not u or u.get("ceiling_success") is None or u["ceiling_success"] <= 0:
        return None
    return float(u["success"] / u["ceiling_success"])
