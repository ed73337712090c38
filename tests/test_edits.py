"""Edit scoring (`setseq.eval.edits`) on rendered ground truth: an edit followed with the concept kept is a
success; a sprite that changed colour or shape is "lost" on every kind of edit; and the bench's scoring tells a
personalization that kept the concept from one that lost it, where edit adherence alone cannot."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from setseq.data.synthetic import CONCEPTS, caption, render
from setseq.eval.edits import EDIT_KINDS, edit_suite, score_edit, summarize_edits, target_spec
from setseq.tools.bench_score import Concept, score_run
from setseq.tools.demo import CONCEPT_DIR


def _recolour(spec, colour):
    return dataclasses.replace(spec, appearance=dataclasses.replace(spec.appearance, colour=colour))


def _reshape(spec, shape):
    return dataclasses.replace(spec, appearance=dataclasses.replace(spec.appearance, shape=shape))


@pytest.mark.parametrize("name", sorted(CONCEPTS))
def test_rendered_edits_score_kept_and_lost(name):
    spec = CONCEPTS[name]
    reference = render(spec, 9, 32)
    suite = edit_suite("sks", "zwx", spec.appearance.shape, spec)
    assert len(suite) >= 8 and {e.kind for e in suite} == set(EDIT_KINDS)
    assert len({e.prompt for e in suite}) == len(suite) and all("sks" in e.prompt for e in suite)
    other_colour = "red" if spec.appearance.colour != "red" else "green"
    other_shape = "circle" if spec.appearance.shape != "circle" else "square"
    for e in suite:
        right = target_spec(spec, e)
        good = score_edit(render(right, 9, 32, seed=1), e, reference, spec, shape_reproduced=True)
        assert good["followed"] and good["kept"] and good["success"], (e.name, good["detected"])
        if e.keeps_motion:
            assert good["motion"] > 0.9
        else:
            assert good["motion"] is None
        recoloured = render(_recolour(right, other_colour), 9, 32, seed=1)
        lost = score_edit(recoloured, e, reference, spec, shape_reproduced=True)
        assert lost["followed"] and not lost["kept"] and not lost["success"], e.name
        assert not lost["colour_kept"]
        reshaped = render(_reshape(right, other_shape), 9, 32, seed=1)
        lost = score_edit(reshaped, e, reference, spec, shape_reproduced=True)
        assert not lost["kept"] and lost["colour_kept"], (e.name, lost["detected"])
        # a shape the run cannot draw even unedited is not held against the edit
        assert score_edit(reshaped, e, reference, spec, shape_reproduced=False)["kept"]
        unchanged = score_edit(reference, e, reference, spec, shape_reproduced=True)
        assert unchanged["kept"] and not unchanged["followed"]  # the concept, but the edit ignored


def test_summarize_edits_counts_and_kinds():
    rows = {
        "a": {
            "kind": "background",
            "adherence": 1.0,
            "followed": True,
            "identity": 1.0,
            "kept": True,
            "motion": 0.8,
            "success": True,
        },
        "b": {
            "kind": "background",
            "adherence": 1.0,
            "followed": True,
            "identity": 0.0,
            "kept": False,
            "motion": 0.4,
            "success": False,
        },
        "c": {
            "kind": "motion",
            "adherence": 0.5,
            "followed": False,
            "identity": 2 / 3,
            "kept": True,
            "motion": None,
            "success": False,
        },
    }
    s = summarize_edits(rows)
    assert s["edit"] == pytest.approx(2.5 / 3) and s["edit_id"] == pytest.approx(5 / 9)
    assert s["kept"] == pytest.approx(2 / 3) and s["success"] == pytest.approx(1 / 3)
    assert s["edit_motion"] == pytest.approx(0.6)
    assert s["kinds"]["background"] == {"followed": 1.0, "kept": 0.5, "success": 0.5}
    assert s["kinds"]["motion"] == {"followed": 0.0, "kept": 1.0, "success": 0.0}


class _Renderer:
    """Stands in for a personalized model: draws each prompt's ground truth, its sprite in `colour`."""

    lora = None
    backbone = SimpleNamespace(transformer=torch.nn.Module())  # no LoRA layer: the ceiling may use it

    def __init__(self, spec, colour):
        suite = edit_suite("sks", "zwx", spec.appearance.shape, spec)
        self.truth = {e.prompt: target_spec(spec, e) for e in suite}
        self.truth |= {caption(target_spec(spec, e)): target_spec(spec, e) for e in suite}  # the ceiling's
        self.spec, self.colour = spec, colour

    def fps(self, opts):
        return 8.0  # the toy model's rate

    def generate(self, prompt, opts):
        spec = _recolour(self.truth.get(prompt, self.spec), self.colour)
        frames = render(spec, 9, 32, seed=2)
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_bench_scores_tell_a_kept_concept_from_a_lost_one(tmp_path, monkeypatch):
    import setseq.infer.generate as G

    name = "cyan_diamond_bounce"
    spec = CONCEPTS[name]
    concept = Concept(name, CONCEPT_DIR / f"{name}.mp4", spec.appearance.shape, "")
    rows = {}
    for label, colour in (("kept", "cyan"), ("lost", "blue")):
        monkeypatch.setattr(
            G.Personalized, "load", classmethod(lambda cls, *a, c=colour, **k: _Renderer(spec, c))
        )
        out = tmp_path / label
        out.mkdir()
        rows[label] = score_run(Path("unused"), concept, None, out)
    kept, lost = rows["kept"], rows["lost"]
    # Both follow every edit: adherence alone cannot tell them apart ...
    assert kept["edit"] == pytest.approx(1.0) and lost["edit"] == pytest.approx(1.0)
    # ... the edit scores can.
    assert kept["kept"] == 1.0 and kept["success"] == 1.0 and kept["edit_id"] >= 2 / 3
    assert lost["kept"] == 0.0 and lost["success"] == 0.0 and lost["edit_id"] < kept["edit_id"] - 0.3
    assert np.isfinite(kept["edit_motion"]) and kept["edit_motion"] > 0.9
    assert set(kept["kinds"]) == set(EDIT_KINDS)


def test_demo_metrics_and_sheet_tell_a_kept_concept_from_a_lost_one(tmp_path, monkeypatch):
    """The demo's scoring, with training and generation replaced by renders of the truth (kept) or of the
    truth in another colour (lost, as the shipped model's edits were): its metrics and sheet must differ."""
    import json

    import setseq.infer.generate as G
    from setseq.tools import demo as D
    from setseq.tools.ceiling import CeilingCache
    from setseq.tools.demo import DEFAULT_CONCEPT, run_demo

    spec = CONCEPTS[DEFAULT_CONCEPT]
    monkeypatch.setattr(D, "train", lambda cfg, out, **k: Path(out))
    # The ceiling from the stand-in model too: the package's shipped ceilings are the real toy model's.
    monkeypatch.setattr(D, "CeilingCache", lambda path: CeilingCache(path, shipped=None))
    results = {}
    for label, colour in (("kept", spec.appearance.colour), ("lost", "blue")):
        monkeypatch.setattr(
            G.Personalized, "load", classmethod(lambda cls, *a, c=colour, **k: _Renderer(spec, c))
        )
        cache = tmp_path / f"ceiling_{label}.json"
        results[label] = run_demo(tmp_path / label, ceiling_cache=cache, log=lambda s: None)
        on_disk = json.loads((tmp_path / label / "metrics.json").read_text())
        assert on_disk["edits"] == results[label]["edits"] and cache.is_file()
    kept, lost = results["kept"]["edits"], results["lost"]["edits"]
    assert kept["followed"] == lost["followed"] == 1.0
    assert kept["kept"] == kept["success"] == 1.0 and lost["kept"] == lost["success"] == 0.0
    names = [f"edit_{e}" for e in results["kept"]["edits_order"]]
    assert all(results["kept"][n]["kept"] for n in names) and not any(
        results["lost"][n]["kept"] for n in names
    )
    # The groups beside the base model's ceiling (here the same renderer: it draws what the run draws). The
    # demo holds its edit colours out of the composites, so none is seen.
    assert set(kept["groups"]) == {"unseen", "motion"} and kept["groups"]["unseen"]["n"] == 5
    assert kept["groups"]["unseen"]["ceiling_success"] == 1.0 and kept["headline"] == 1.0
    assert (
        lost["groups"]["unseen"]["success"] == 0.0 and lost["headline"] is None
    )  # the base succeeds on none
    assert {results["kept"][n]["group"] for n in names} == {"unseen", "motion"}


def test_swaps_never_show_an_edit_background(tmp_path):
    """The bench's and demo's background swaps composite onto the default colours minus every background the
    concept's edit suite asks for: a kept concept is one that survived a background training never showed.
    A palette set in the config is kept as given."""
    from setseq.eval.edits import edit_backgrounds
    from setseq.tools.bench import _run_config
    from setseq.tools.bench_score import load_suite

    for concept in load_suite():
        cfg = _run_config("setseq", concept, 0, "toy", [], tmp_path / "masks")
        asked = set(edit_backgrounds(CONCEPTS[concept.name]))
        assert len(asked) >= 3 and cfg.data.mask is not None
        assert cfg.data.swap_backgrounds and not asked & set(cfg.data.swap_backgrounds), concept.name
    cyan = load_suite(names=["cyan_diamond_bounce"])[0]
    given = _run_config("setseq", cyan, 0, "toy", ["data.swap_backgrounds=[white,green]"], tmp_path / "m")
    assert given.data.swap_backgrounds == ["white", "green"]


# Every default colour, in another order than data.swap_backgrounds' default (which the bench would narrow).
_PALETTE = ["black", "purple", "blue", "yellow", "green", "gray", "white"]


def test_grouping_never_counts_a_composited_colour_as_unseen(tmp_path):
    """With a recipe's palette (the bench's: edit colours held out; and the default one, which composites onto
    every edit colour), an edit whose background is a composited colour is "seen", whatever its kind; a colour
    within the detector's tolerance of an edit's background counts as that background."""
    from setseq.data.synthetic import BG_COLOURS
    from setseq.eval.edits import EDIT_GROUPS, edit_group, group_edits
    from setseq.tools.bench import _run_config
    from setseq.tools.bench_score import load_suite
    from setseq.tools.ceiling import composited_colours

    for concept in load_suite():
        spec = CONCEPTS[concept.name]
        suite = edit_suite("sks", "zwx", concept.shape, spec)
        for extra in ([], [f"data.swap_backgrounds=[{','.join(_PALETTE)}]"]):
            cfg = _run_config("setseq", concept, 0, "toy", extra, tmp_path / "m" / concept.name)
            composited = composited_colours(cfg)
            assert composited == list(cfg.data.swap_backgrounds) and composited
            groups = group_edits(suite, composited)
            assert set(groups.values()) <= set(EDIT_GROUPS)
            for e in suite:
                bg = e.requested.get("bg_colour")
                if bg in composited:
                    assert groups[e.name] == "seen", (concept.name, e.name, composited)
                elif e.kind in ("motion", "context"):
                    assert groups[e.name] == "motion"
                else:
                    assert groups[e.name] == "unseen"
            if (
                extra
            ):  # the default palette holds every edit colour: nothing is unseen, only motion edits left
                assert "unseen" not in groups.values() and "seen" in groups.values()
        # A composite colour 20 RGB units off an edit's background (a random colour) counts as that background.
        edit = next(e for e in suite if e.kind == "background")
        r, g, b = BG_COLOURS[edit.requested["bg_colour"]]
        near = (min(255, r + 12), max(0, g - 12), min(255, b + 11))
        assert edit_group(edit, [near]) == "seen" and edit_group(edit, []) == "unseen"


def test_nothing_is_seen_without_swaps(tmp_path):
    from setseq.eval.edits import group_edits
    from setseq.tools.bench import _run_config
    from setseq.tools.bench_score import load_suite
    from setseq.tools.ceiling import composited_colours

    cyan = load_suite(names=["cyan_diamond_bounce"])[0]
    suite = edit_suite("sks", "zwx", cyan.shape, CONCEPTS[cyan.name])
    off = ["stage1.background_swap=0", "stage2.background_swap=0", "stage1.background_weight=0.5"]
    for method, extra in (("setseq", off), ("dreambooth", []), ("two_stage", [])):
        cfg = _run_config(method, cyan, 0, "toy", extra, tmp_path / method)
        assert composited_colours(cfg) == [], method
        groups = group_edits(suite, composited_colours(cfg))
        assert "seen" not in groups.values() and sum(g == "unseen" for g in groups.values()) == 5


def test_group_summaries_and_the_headline():
    from setseq.eval.edits import ceiling_share, summarize_groups

    def sc(kind, ok):
        return {"kind": kind, "followed": True, "kept": ok, "colour_kept": ok, "success": ok}

    scores = {"a": sc("background", True), "b": sc("background", False), "c": sc("pattern", False)}
    scores |= {"d": sc("motion", True), "e": sc("background", True)}
    groups = {"a": "unseen", "b": "unseen", "c": "unseen", "d": "motion", "e": "seen"}
    base = {n: sc(s["kind"], n != "c") for n, s in scores.items()}
    g = summarize_groups(scores, groups, base)
    assert g["unseen"]["n"] == 3 and g["unseen"]["success"] == pytest.approx(1 / 3)
    assert g["unseen"]["ceiling_success"] == pytest.approx(2 / 3) and g["seen"]["success"] == 1.0
    assert ceiling_share(g) == pytest.approx(0.5)  # 1 success where the base model has 2; "e" never counts
    assert summarize_groups(scores, groups)["unseen"]["ceiling_success"] is None  # no ceiling: not guessed
    assert ceiling_share(summarize_groups(scores, groups)) is None
    none = summarize_groups(scores, groups, {n: sc(s["kind"], False) for n, s in scores.items()})
    assert ceiling_share(none) is None  # the base model succeeds on none: no share
