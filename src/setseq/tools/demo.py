"""`setseq demo`: personalize the shipped toy model to a shipped dynamic concept, then show what it learned.

1. the concept's mp4 (`DEFAULT_CONCEPT`: a held-out appearance x motion the base model mostly misses from text);
2. stage 1 + stage 2 with `assets/toy-demo.yaml`;
3. videos: the base model from the concept's own caption, the concept reproduced, identity-only next to
   identity + motion, and the concept's edit suite (`setseq.eval.edits`: 8 edits, new plain and patterned
   backgrounds, other motions, a new context);
4. a labelled contact sheet (each edit marked kept or LOST, with its group: a background training composited
   onto ("seen"), a new one ("unseen"), or a motion edit), and `metrics.json` scored by the toy world's
   detectors: every edit for adherence and for the concept kept, and their summary under "edits", by group
   beside the base model's own rate on the same edits from their full captions (its ceiling, `setseq.tools.ceiling`,
   cached) and the headline: success on unseen backgrounds as a share of that ceiling.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from setseq.config import DataConfig
from setseq.config_load import ASSETS, TOY_RECIPE, resolve_config
from setseq.data.synthetic import CONCEPTS, ConceptSpec, render_mask
from setseq.data.video import from_tensor, load_clip, write_video
from setseq.errors import SetseqError
from setseq.eval import toy_metrics as M
from setseq.eval.edits import (
    Edit,
    ceiling_share,
    edit_backgrounds,
    edit_suite,
    group_edits,
    judge_kept,
    score_edit,
    shape_reproduced,
    summarize_edits,
    summarize_groups,
)
from setseq.eval.metrics import mse
from setseq.infer.generate import GenerateOptions, Personalized
from setseq.io import atomic_path, write_json
from setseq.tools.ceiling import CeilingCache, composited_colours
from setseq.train.methods import effective_config, uses_mask
from setseq.train.run import train

CONCEPT_DIR = ASSETS / "concepts"
DEMO_CONFIG = TOY_RECIPE
MARKER = ".setseq-demo"
#: The demo's concept: of the shipped ones, one whose look and motion the default toy model gets wrong from
#: its caption on every seed measured (BENCHMARKS.md, "Demo"), so the run shows what personalization adds.
DEFAULT_CONCEPT = "cyan_diamond_bounce"
#: More steps than any stage of the demo recipe: a checkpoint only at the end of each stage.
NO_INTERMEDIATE_CHECKPOINTS = 1_000_000


@dataclass
class Shot:
    """One generated video of the demo and what it should show."""

    name: str
    prompt: str
    identity_scale: float = 1.0
    motion_scale: float = 1.0
    base: bool = False  # the base model alone, no LoRA
    edit: Edit | None = None  # an edit of the concept's suite (scored for adherence and for the concept kept)


def shots(token: str, motion_token: str, shape: str, caption: str, spec: ConceptSpec) -> list[Shot]:
    """The base model from the caption, the reproduction, the same with the LoRA off, identity alone, then the
    concept's edit suite."""
    t_motion = f"a {token} {shape} in {motion_token} motion"
    return [
        Shot("base_from_caption", caption, base=True),
        Shot("reproduced", t_motion),
        # The same prompt and seed with the LoRA off: what a personalization that learned nothing would show.
        Shot("lora_off", t_motion, identity_scale=0.0, motion_scale=0.0),
        Shot("identity_only", t_motion, motion_scale=0.0),
        *(
            Shot(f"edit_{e.name}", e.prompt, motion_scale=e.motion_scale, edit=e)
            for e in edit_suite(token, motion_token, shape, spec)
        ),
    ]


def concept_mask(name: str, folder: Path) -> Path:
    """Write the exact subject mask of the shipped concept `name` (the toy world knows it) as one PNG per
    frame into `folder` (`data.mask`); returns the folder."""
    index = json.loads((CONCEPT_DIR / "concepts.json").read_text())
    entry = index[name]
    masks = render_mask(CONCEPTS[name], int(entry.get("frames", 9)), int(entry.get("size", 32)))
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        path = folder / f"{i:04d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray((m * 255).astype(np.uint8), "L").save(tmp, format="PNG")
    return folder


def with_concept_mask(cfg, name: str, folder: Path):
    """`cfg` with the concept's mask (`concept_mask`) when its method's stages use one, else `cfg` itself.
    Background swaps then composite onto the default plain colours *other than* those the concept's edit
    suite asks for (`setseq.eval.edits.edit_backgrounds`), so the edits are scored on backgrounds training
    never showed; a `data.swap_backgrounds` set in the config is kept as given. The prior's backgrounds
    (`regularizers.prior_backgrounds`) are those colours too, with a mask or without."""
    eff = effective_config(cfg)
    if uses_mask(eff):
        data = dataclasses.replace(cfg.data, mask=str(concept_mask(name, folder)))
    elif eff.regularizers.prior_backgrounds and eff.regularizers.prior_videos:
        data = cfg.data
    else:
        return cfg
    if list(cfg.data.swap_backgrounds) == list(DataConfig().swap_backgrounds):
        held_out = set(edit_backgrounds(CONCEPTS[name]))
        data = dataclasses.replace(
            data, swap_backgrounds=[c for c in data.swap_backgrounds if c not in held_out]
        )
    return dataclasses.replace(cfg, data=data)


def _label_sheet(path: Path, rows: list[tuple[str, np.ndarray]], scale: int = 3) -> None:
    """A PNG grid: one labelled row of frames per video."""
    label_w, gap = 240, 2
    f, h, w, _ = rows[0][1].shape
    H, W = h * scale, w * scale
    sheet = Image.new("RGB", (label_w + f * (W + gap), len(rows) * (H + gap)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        y = r * (H + gap)
        draw.text((6, y + H // 2 - 6), label, fill=(230, 230, 230))
        for i in range(min(f, len(frames))):
            sheet.paste(
                Image.fromarray(frames[i]).resize((W, H), Image.NEAREST), (label_w + i * (W + gap), y)
            )
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SetseqError(
            f"{out} exists and is not a setseq demo folder",
            "pass another --out (the demo replaces its own folder only)",
        )
    if (out / "run").exists():
        shutil.rmtree(out / "run")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by setseq demo\n")


def run_demo(
    out: Path,
    concept: str | None = None,
    quick: bool = False,
    model: str = "toy",
    ceiling_cache: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the whole demo into `out`; returns the metrics written to `out/metrics.json`. The base model's
    ceiling is read from (or computed once into) the JSON file `ceiling_cache` (`setseq.tools.ceiling.CeilingCache`)."""
    t0 = time.perf_counter()
    name, entry = _shipped_concept(concept)
    spec = CONCEPTS[name]
    video = CONCEPT_DIR / entry["file"]
    shape = entry["shape"]
    _prepare_out(out)
    log(f"demo: concept '{name}' ({entry['caption']}), video {video}")

    # 1-2. Personalize: stage 1 (frames) and stage 2 (clip).
    cfg = _demo_config(name, video, shape, model, quick, out / "mask")
    run_dir = train(cfg, out / "run", log=log)
    t_train = time.perf_counter() - t0

    # 3. Generate every shot.
    reference = load_clip(video, frames=cfg.data.frames).frames
    personalized = Personalized.load(run_dir, log=log)
    fps = personalized.fps(GenerateOptions())  # the concept video's own rate, which the run recorded
    write_video(out / "reference.mp4", reference, fps=fps)
    base = Personalized.load(None, model=model, backbone="toy", log=log)
    steps = 4 if quick else None
    results: dict[str, Any] = {"concept": name, "caption": entry["caption"], "quick": quick}
    rows: list[tuple[str, np.ndarray]] = [("reference", reference)]
    plan = shots(cfg.concept.token, cfg.concept.motion_token, shape, entry["caption"], spec)
    results["composited"], groups, raw_ceiling = _groups_and_ceiling(
        cfg, plan, name, reference, model, steps, CeilingCache(ceiling_cache), lambda: base, log
    )
    ceiling: dict[str, dict[str, Any]] = {}
    shape_ok = False
    edit_scores: dict[str, dict[str, Any]] = {}
    for shot in tqdm(plan, desc="generate", unit="video"):
        pm = base if shot.base else personalized
        opts = GenerateOptions(
            identity_scale=shot.identity_scale, motion_scale=shot.motion_scale, steps=steps, seed=0
        )
        frames = from_tensor(pm.generate(shot.prompt, opts))
        write_video(out / f"{shot.name}.mp4", frames, fps=fps)
        if shot.name == "reproduced":  # `kept` counts the shape only where the run draws it unedited
            shape_ok = shape_reproduced(frames, spec)
            # (the reproduction comes before every edit)
            ceiling = {n: judge_kept(c, spec, shape_reproduced=shape_ok) for n, c in raw_ceiling.items()}
        results[shot.name], label, sc = _score_shot(shot, frames, reference, spec, shape_ok, groups, ceiling)
        if sc is not None and shot.edit is not None:
            edit_scores[shot.edit.name] = sc
        rows.append((label, frames))
    results["edits"] = _edits_summary(edit_scores, groups, ceiling)
    results["edits_order"] = list(edit_scores)

    # 4. Contact sheet and metrics.
    _label_sheet(out / "contact_sheet.png", rows)
    results["seconds"] = {"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)}
    write_json(out / "metrics.json", results)
    log(_summary(results))
    log(f"demo: wrote {out}/*.mp4, contact_sheet.png and metrics.json in {results['seconds']['total']:.0f} s")
    return results


def _demo_config(name: str, video: Path, shape: str, model: str, quick: bool, mask_folder: Path) -> Any:
    """The demo recipe on the concept's video, with its exact subject mask (the toy world knows it).

    The recipe's steps and settings as they are; left out is what a demo run has no use for, as it starts
    from scratch every time: resume points before the end of each stage (always checkpointed) and
    TensorBoard events (the losses are in run/logs/loss.jsonl)."""
    overrides = [
        f"concept.class_word={shape}",
        f"model.path={model}",
        f"train.checkpoint_every={NO_INTERMEDIATE_CHECKPOINTS}",
        "train.tensorboard=false",
    ]
    if quick:
        overrides += ["stage1.steps=4", "stage2.steps=4"]
    cfg = resolve_config(DEMO_CONFIG, {"data": {"video": str(video)}}, overrides)
    return with_concept_mask(cfg, name, mask_folder)


def _edits_summary(
    edit_scores: dict[str, dict[str, Any]], groups: dict[str, str], ceiling: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The edits' scores summed up: overall, by group against the base model's ceiling, and the headline."""
    summary = summarize_edits(edit_scores)
    summary["groups"] = summarize_groups(edit_scores, groups, ceiling)
    summary["headline"] = ceiling_share(summary["groups"])
    return summary


def _groups_and_ceiling(
    cfg, plan: list[Shot], name: str, reference: np.ndarray, model: str, steps, cache, base, log
):
    """The colours the run composited onto, its edits' groups, and the base model's edits from full captions
    at the run's seed (`setseq.tools.ceiling`, from `cache` or computed with `base()`), to be judged by the run's own
    rule for the shape once its reproduction is drawn."""
    composited = composited_colours(cfg)
    groups = group_edits([s.edit for s in plan if s.edit is not None], composited)
    shape = cfg.concept.class_word
    raw = cache.ceiling(
        name, shape, reference, model=model, seed=cfg.train.seed, steps=steps, pipeline=base, log=log
    )
    return composited, groups, raw["edits"]


def _shipped_concept(concept: str | None) -> tuple[str, dict[str, str]]:
    """The named shipped concept (default: `DEFAULT_CONCEPT`) and its entry in concepts.json."""
    index_file = CONCEPT_DIR / "concepts.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    name = concept or (DEFAULT_CONCEPT if DEFAULT_CONCEPT in index else next(iter(index), None))
    if name not in index or name not in CONCEPTS:
        raise SetseqError(
            f"unknown demo concept {name!r}", f"use one of: {', '.join(index) or '(none shipped)'}"
        )
    return name, index[name]


def _score_shot(
    shot: Shot,
    frames: np.ndarray,
    reference: np.ndarray,
    spec,
    shape_ok: bool,
    groups: dict[str, str],
    ceiling: dict[str, dict[str, Any]],
) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """One shot's metrics against the reference, its contact-sheet label, and its edit score (an edit shot):
    an edit's group (`groups`) and the base model's result on it (`ceiling`) are recorded and labelled."""
    motion = M.sprite_motion_fidelity(frames, reference)
    entry = {
        "prompt": shot.prompt,
        "identity_scale": shot.identity_scale,
        "motion_scale": shot.motion_scale,
        "appearance_fidelity": M.appearance_fidelity(frames, reference),
        "motion_similarity": motion["similarity"],
        "motion_family": motion["family"],
        "motion_family_match": bool(motion["family_match"]),
        "mse": mse(frames, reference),
        "temporal_consistency": M.pixel_temporal_consistency(frames),
    }
    if shot.edit is None:
        return entry, shot.name, None
    sc = score_edit(frames, shot.edit, reference, spec, shape_reproduced=shape_ok)
    entry |= {
        "kind": sc["kind"],
        "requested": shot.edit.requested,
        "edit_adherence": sc["adherence"],
        "followed": sc["followed"],
        "kept": sc["kept"],
        "colour_kept": sc["colour_kept"],
        "success": sc["success"],
        "detected": sc["detected"],
        "group": groups[shot.edit.name],
        "ceiling_kept": ceiling[shot.edit.name]["kept"],
        "ceiling_success": ceiling[shot.edit.name]["success"],
    }
    base = "base kept" if ceiling[shot.edit.name]["kept"] else "base lost"
    label = (
        f"{shot.name[5:]} [{groups[shot.edit.name]}] {'kept' if sc['kept'] else 'LOST'}"
        f"{'' if sc['followed'] else ', not followed'} ({base})"
    )
    return entry, label, sc


def _summary(r: dict[str, Any]) -> str:
    lines = [
        f"{'video':34s} {'appearance':>10s} {'motion sim':>10s} {'family':>14s} {'edit':>6s} {'kept':>5s} {'MSE':>7s}"
    ]
    for k, v in r.items():
        if isinstance(v, dict) and "appearance_fidelity" in v:
            edit = f"{v['edit_adherence']:.2f}" if "edit_adherence" in v else "-"
            kept = ("yes" if v["kept"] else "LOST") if "kept" in v else "-"
            lines.append(
                f"{k:34s} {v['appearance_fidelity']:10.2f} {v['motion_similarity']:10.2f} {v['motion_family']:>14s} {edit:>6s} {kept:>5s} {v['mse']:7.4f}"
            )
    e = r.get("edits")
    if e:
        lines.append(
            f"edits: {100 * e['success']:.0f}% succeeded (followed and kept); kept {100 * e['kept']:.0f}%, "
            f"followed {100 * e['followed']:.0f}%, identity {e['edit_id']:.2f}"
        )
        for g, v in e.get("groups", {}).items():
            lines.append(
                f"  {g:6s} ({v['n']} edits): kept {_pct(v['kept'])} (base model {_pct(v['ceiling_kept'])}), "
                f"success {_pct(v['success'])} (base model {_pct(v['ceiling_success'])})"
                + ("  - composited in training: not counted" if g == "seen" else "")
            )
        h, why = e.get("headline"), "- (the base model succeeds on none of the unseen-background edits)"
        lines.append(
            "headline: success on unseen backgrounds = "
            + (f"{100 * h:.0f}% of the base model's on the same edits" if h is not None else why)
        )
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"
