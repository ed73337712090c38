"""Edit scoring (`setseq.eval.edits`) on rendered ground truth: an edit followed with the concept kept is a
success; a sprite that changed colour or shape is "lost" on every kind of edit; and the bench's scoring tells a
personalization that kept the concept from one that lost it, where edit adherence alone cannot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from setseq.bench import Concept, _score
from setseq.data.synthetic import CONCEPTS, render
from setseq.demo import CONCEPT_DIR
from setseq.eval.edits import EDIT_KINDS, edit_suite, score_edit, summarize_edits, target_spec


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

    def __init__(self, spec, colour):
        suite = edit_suite("sks", "zwx", spec.appearance.shape, spec)
        self.truth = {e.prompt: target_spec(spec, e) for e in suite}
        self.spec, self.colour = spec, colour

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
        rows[label] = _score(Path("unused"), concept, "toy", None, out)
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
    import setseq.train.run as R
    from setseq.demo import DEFAULT_CONCEPT, run_demo

    spec = CONCEPTS[DEFAULT_CONCEPT]
    monkeypatch.setattr(R, "train", lambda cfg, out, **k: Path(out))
    results = {}
    for label, colour in (("kept", spec.appearance.colour), ("lost", "blue")):
        monkeypatch.setattr(
            G.Personalized, "load", classmethod(lambda cls, *a, c=colour, **k: _Renderer(spec, c))
        )
        results[label] = run_demo(tmp_path / label, log=lambda s: None)
        on_disk = json.loads((tmp_path / label / "metrics.json").read_text())
        assert on_disk["edits"] == results[label]["edits"]
    kept, lost = results["kept"]["edits"], results["lost"]["edits"]
    assert kept["followed"] == lost["followed"] == 1.0
    assert kept["kept"] == kept["success"] == 1.0 and lost["kept"] == lost["success"] == 0.0
    names = [f"edit_{e}" for e in results["kept"]["edits_order"]]
    assert all(results["kept"][n]["kept"] for n in names) and not any(
        results["lost"][n]["kept"] for n in names
    )


def test_swaps_never_show_an_edit_background(tmp_path):
    """The bench's and demo's background swaps composite onto the default colours minus every background the
    concept's edit suite asks for: a kept concept is one that survived a background training never showed.
    A palette set in the config is kept as given."""
    from setseq.bench import _run_config, load_suite
    from setseq.eval.edits import edit_backgrounds

    for concept in load_suite():
        cfg = _run_config("setseq", concept, 0, "toy", [], tmp_path / "masks")
        asked = set(edit_backgrounds(CONCEPTS[concept.name]))
        assert len(asked) >= 3 and cfg.data.mask is not None
        assert cfg.data.swap_backgrounds and not asked & set(cfg.data.swap_backgrounds), concept.name
    cyan = load_suite(names=["cyan_diamond_bounce"])[0]
    given = _run_config("setseq", cyan, 0, "toy", ["data.swap_backgrounds=[white,green]"], tmp_path / "m")
    assert given.data.swap_backgrounds == ["white", "green"]
