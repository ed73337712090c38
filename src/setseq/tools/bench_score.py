"""How the bench scores a run (`setseq bench`, `setseq.tools.bench` runs the jobs): the concept suite, the
reproduction and the edit suite generated and scored with the toy world's detectors (`score_run`), and each
run's edits in groups beside the base model's ceiling (`add_groups`). `benchmarks/rescore.py` scores a bench's
runs again through the same `score_run`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from setseq.config_load import ASSETS
from setseq.data.synthetic import CONCEPTS
from setseq.data.video import from_tensor, load_clip, write_video
from setseq.errors import SetseqError
from setseq.eval import toy_metrics as M
from setseq.eval.edits import (
    ceiling_share,
    edit_suite,
    group_edits,
    judge_kept,
    score_edit,
    shape_reproduced,
    summarize_edits,
)
from setseq.eval.edits import summarize_groups as summarize_edit_groups  # (bench_tables has its own)
from setseq.eval.metrics import mse
from setseq.infer.generate import GenerateOptions, Personalized
from setseq.tools.bench_tables import EDIT_COLUMNS
from setseq.tools.ceiling import CeilingCache, composited_colours

DEFAULT_SUITE = ASSETS / "concepts" / "concepts.json"


@dataclass
class Concept:
    name: str
    video: Path
    shape: str
    caption: str


def load_suite(path: str | Path | None = None, names: list[str] | None = None) -> list[Concept]:
    """The concepts of a suite file, checked: every video exists; `names` picks and orders a subset."""
    path = Path(path) if path else DEFAULT_SUITE
    if not path.is_file():
        raise SetseqError(f"concept suite {path} does not exist", "pass --suite FILE.json")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SetseqError(f"concept suite {path} is not valid JSON ({exc})", "fix the file") from None
    if not isinstance(index, dict) or not index:
        raise SetseqError(
            f"concept suite {path} holds no concepts", 'write {"name": {"file": ..., "shape": ...}}'
        )
    concepts = []
    for name in names or list(index):
        if name not in index:
            raise SetseqError(
                f"concept {name!r} is not in the suite {path}", f"use one of: {', '.join(index)}"
            )
        entry = index[name]
        if not isinstance(entry, dict) or "file" not in entry or "shape" not in entry:
            raise SetseqError(f"concept {name!r} in {path} needs 'file' and 'shape'", "fix the suite file")
        if name not in CONCEPTS:  # the edit shots and their scores need the concept's true attributes
            raise SetseqError(
                f"concept {name!r} of the suite {path} is not a toy-world concept with known ground truth",
                f"name concepts after setseq.data.synthetic.CONCEPTS: {', '.join(sorted(CONCEPTS))}",
            )
        video = path.parent / entry["file"]
        if not video.is_file():
            raise SetseqError(
                f"concept {name!r} of the suite {path}: its video {video} is missing",
                "restore the file or remove the concept from the suite",
            )
        concepts.append(Concept(name, video, str(entry["shape"]), str(entry.get("caption", ""))))
    return concepts


def score_run(
    run_dir: Path,
    concept: Concept,
    gen_steps: int | None,
    out: Path,
    identity_scale: float = 1.0,
    guidance_scale: float | None = None,
) -> dict:
    """Generate the reproduction and the concept's edit suite (`setseq.eval.edits`), and score them: the
    reproduction for MSE, appearance, TC and motion; every edit for adherence, identity, kept and motion.
    `identity_scale` and `guidance_scale` are the sampling's for every video but the LoRA-off one (the bench
    samples at 1.0 and the run's guidance; `benchmarks/rescore.py` tries others on a bench's runs)."""
    pm = Personalized.load(run_dir, log=lambda s: None)
    meta = pm.lora.meta if pm.lora is not None else {}
    token, motion_token = str(meta.get("token", "sks")), str(meta.get("motion_token", "zwx"))
    reference, fps = load_clip(concept.video, frames=9).frames, pm.fps(GenerateOptions())
    spec = CONCEPTS[concept.name]  # (load_suite checked it is a toy-world concept)

    def generate(
        name: str, prompt: str, motion_scale: float = 1.0, identity: float = identity_scale
    ) -> np.ndarray:
        opts = GenerateOptions(
            identity_scale=identity,
            motion_scale=motion_scale,
            guidance_scale=guidance_scale if identity else None,
            steps=gen_steps,
            seed=0,
        )
        frames = from_tensor(pm.generate(prompt, opts))
        write_video(out / f"{name}.mp4", frames, fps=fps)
        return frames

    t_motion = f"a {token} {concept.shape} in {motion_token} motion"
    rep = generate("reproduced", t_motion)
    # What the same prompt and seed give with the LoRA off: what a personalization that learned nothing
    # would score (`mse_off`, beside the reproduction's `mse`).
    off = generate("lora_off", t_motion, motion_scale=0.0, identity=0.0)
    shape_ok = shape_reproduced(rep, spec)
    edits = {
        e.name: score_edit(
            generate(f"edit_{e.name}", e.prompt, e.motion_scale),
            e,
            reference,
            spec,
            shape_reproduced=shape_ok,
        )
        for e in edit_suite(token, motion_token, concept.shape, spec)
    }
    summary = summarize_edits(edits)
    return {
        "shape_reproduced": bool(shape_ok),
        "mse": mse(rep, reference),
        "mse_off": mse(off, reference),
        "appearance": M.appearance_fidelity(rep, reference),
        "tc": M.pixel_temporal_consistency(rep),
        "motion": float(M.sprite_motion_fidelity(rep, reference)["similarity"]),
        **{c: summary[c] for c in EDIT_COLUMNS},
        "kinds": summary["kinds"],
        "edits": edits,
    }


def _shape_reproduced(row: dict, here: Path) -> bool:
    """Whether a run's reproduction draws the concept's shape: from its row, or (a row scored before the row
    held it) from its reproduced video."""
    if "shape_reproduced" in row:
        return bool(row["shape_reproduced"])
    video = here / "reproduced.mp4"
    return video.is_file() and shape_reproduced(load_clip(video).frames, CONCEPTS[row["concept"]])


def add_groups(
    rows: list[tuple[dict, Concept, Any, Path]],
    cache: CeilingCache,
    model: str,
    gen_steps: int | None,
    log: Callable[[str], None],
) -> None:
    """Add to each (row, concept, config, run folder) its edits in groups (seen / unseen / motion backgrounds
    for the colours its training composited onto), beside the base model's ceiling on the same edits (at the
    run's seed: cached, computed with the base model loaded once where missing; judged by the run's own rule
    for the shape, `judge_kept`), and the headline share."""
    base: list[Any] = []

    def pipeline() -> Any:  # the base model, loaded once and only if a ceiling is missing from the cache
        if not base:
            base.append(Personalized.load(None, model, log=lambda s: None))
        return base[0]

    for row, concept, cfg, here in rows:
        reference = load_clip(concept.video, frames=9).frames
        entry = cache.ceiling(
            concept.name,
            concept.shape,
            reference,
            model=model,
            seed=int(row["seed"]),
            steps=gen_steps,
            pipeline=pipeline,
            log=log,
        )
        spec = CONCEPTS[concept.name]
        shape_ok = _shape_reproduced(row, here)
        ceiling = {n: judge_kept(s, spec, shape_reproduced=shape_ok) for n, s in entry["edits"].items()}
        composited = composited_colours(cfg)
        suite = edit_suite("sks", "zwx", concept.shape, spec)  # the edits' names hold no token
        groups = summarize_edit_groups(row["edits"], group_edits(suite, composited), ceiling)
        row |= {"composited": composited, "groups": groups, "unseen_share": ceiling_share(groups)}
        row["shape_reproduced"] = shape_ok
