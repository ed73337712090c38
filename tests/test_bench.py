"""`setseq bench`: the quick mode end to end on the shipped toy model, the table maths, and bad suites."""

from __future__ import annotations

import json
import math
import os
import runpy
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
import torch

from setseq.cli import main
from setseq.config import METHODS
from setseq.errors import SetseqError
from setseq.tools.bench_score import load_suite
from setseq.tools.bench_tables import COLUMNS, checks, paired, summarize, table


@pytest.fixture(scope="module")
def _ceilings(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg_cache")


@pytest.fixture(autouse=True)
def _ceiling_cache_in_tmp(_ceilings, monkeypatch):
    """The bench's default ceiling cache (`~/.cache/setseq/base_ceiling.json`) in a folder of this module's
    own: the tests never write the user's, and share the ceilings they compute."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(_ceilings))


def _quick_bench(out, methods: list[str], extra: list[str] = ()) -> dict:
    """`setseq bench --quick` with `methods`; checks what every quick bench must hold; returns bench.json."""
    assert main(["bench", "--quick", "--out", str(out), "--methods", ",".join(methods), *extra]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["quick"] and result["seeds"] == 1 and len(result["concepts"]) == 2
    assert {r["method"] for r in result["rows"]} == set(methods)
    assert len(result["rows"]) == len(methods) * 2
    for r in result["rows"]:
        assert 0.0 <= r["appearance"] <= 1.0 and 0.0 <= r["edit"] <= 1.0 and 0.0 <= r["tc"] <= 1.0
        assert math.isfinite(r["mse"]) and r["mse"] >= 0.0
        assert (out / "runs" / r["method"] / f"{r['concept']}-seed0" / "reproduced.mp4").is_file()
    md = (out / "bench.md").read_text()
    assert all(f"| {m} |" in md for m in methods) and "±" in md
    assert all(f"- vs {m}: mse " in md for m in methods if m != "setseq")
    assert set(result["paired"]) == set(methods) - {"setseq"}
    claims = [c["claim"] for c in result["checks"]]
    assert claims[0].startswith("setseq identity on edits") and "setseq edit success > dreambooth's" in claims
    for r in result["rows"]:  # every run scored on its whole edit suite, each kind of edit reported
        assert len(r["edits"]) == 8 and set(r["kinds"]) == {"background", "pattern", "motion", "context"}
        assert r["success"] <= min(r["kept"], r["edit"] + 1e-9)
        assert (out / "runs" / r["method"] / f"{r['concept']}-seed0" / "edit_background_white.mp4").is_file()
    assert "Per kind of edit" in md and "| setseq | " in md
    # The edits in groups beside the base model's ceiling, which is the same for every method (the cache key
    # holds no method); the baselines composite nothing, so none of their edits is seen.
    assert "Headline: success on unseen backgrounds" in md and set(result["headline"]) == set(methods)
    ceilings: dict = {}
    for r in result["rows"]:
        assert sum(g["n"] for g in r["groups"].values()) == 8
        assert all(g["ceiling_success"] is not None for g in r["groups"].values())
        if r["method"] != "setseq":
            assert r["composited"] == [] and "seen" not in r["groups"]
        base = {g: (e["ceiling_kept"], e["ceiling_success"]) for g, e in r["groups"].items() if g != "seen"}
        assert ceilings.setdefault(r["concept"], base) == base
    return result


def test_bench_learns_each_concept_and_scores_every_edit(tmp_path):
    """setseq and DreamBooth-LoRA on the quick bench's 2 concepts (30 + 30 steps): besides the tables and the
    scores of every edit, each trained run's reproduction is closer to the reference than the same prompt and
    seed with the LoRA off, which is what a personalization that learned nothing would draw.

    With half of stage 1's frames composited (the recipe before 2026-12-02): the recipe's stage 1 composites
    every frame, so in 30 steps it has not yet seen the concept's own scene, and its reproduction can still be
    as far from the reference as the LoRA-off video (measured: purple, 0.088 vs 0.085; 0.003 after the
    recipe's 600 + 900 steps)."""
    swaps = ["stage1.background_swap=0.5", "stage2.background_swap=0"]
    result = _quick_bench(
        tmp_path / "bench", ["setseq", "dreambooth"], ["stage1.steps=30", "stage2.steps=30", *swaps]
    )
    for r in result["rows"]:
        assert r["mse"] < 0.85 * r["mse_off"], (r["method"], r["concept"], r["mse"], r["mse_off"])


@pytest.mark.slow
def test_bench_quick_runs_every_method_on_the_shipped_model(tmp_path):
    _quick_bench(tmp_path / "bench", list(METHODS))


def test_bench_reuses_finished_runs_and_retrains_changed_ones(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--quick", "--methods", "setseq", "--concepts", "red_star_bounce", "--out", str(out)]
    lora = out / "runs" / "setseq" / "red_star_bounce-seed0" / "run" / "setseq.safetensors"
    assert main(args) == 0
    first = json.loads((out / "bench.json").read_text())
    stamp = lora.stat().st_mtime_ns
    capsys.readouterr()

    # `benchmarks/rescore.py` samples the same runs again: with the bench's options it gives the bench's
    # scores; with another guidance, other videos.
    rescore = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "rescore.py"))["main"]
    for out2, options in ((tmp_path / "same", []), (tmp_path / "g1", ["--guidance", "1.0"])):
        with patch.object(sys, "argv", ["rescore.py", str(out), str(out2), *options]):
            rescore()
    same, g1 = (
        json.loads((f / lora.parent.parent.relative_to(out) / "row.json").read_text())
        for f in (tmp_path / "same", tmp_path / "g1")
    )
    assert all(same["row"][c] == pytest.approx(first["rows"][0][c]) for c in COLUMNS)
    assert (
        g1["rescored"] == {"identity_scale": 1.0, "guidance_scale": 1.0}
        and g1["row"]["edits"] != same["row"]["edits"]
    )
    assert lora.stat().st_mtime_ns == stamp

    assert main(args) == 0  # the same bench again: nothing is trained
    again = json.loads((out / "bench.json").read_text())
    assert "reused from an earlier bench" in capsys.readouterr().out
    assert lora.stat().st_mtime_ns == stamp and again["reused"] == 1 and again["rows"] == first["rows"]

    (lora.parent.parent / "row.json").unlink()  # trained, but stopped before its scores were written
    assert main(args) == 0
    assert "trained by an earlier bench, scored now" in capsys.readouterr().out
    rescored = json.loads((out / "bench.json").read_text())["rows"][0]
    assert lora.stat().st_mtime_ns == stamp
    assert all(rescored[c] == pytest.approx(first["rows"][0][c]) for c in COLUMNS)  # scoring is deterministic

    # A config field added by a newer setseq (absent from the saved YAML) takes its default: still reused.
    def drop_field(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if "block_swap" not in line)

    saved = lora.parent / "config.yaml"
    saved.write_text(drop_field(saved.read_text()))
    row_file = lora.parent.parent / "row.json"
    row = json.loads(row_file.read_text())
    assert "block_swap" in row["config"]
    row_file.write_text(json.dumps({**row, "config": drop_field(row["config"])}))
    assert main(args) == 0
    assert "reused from an earlier bench" in capsys.readouterr().out and lora.stat().st_mtime_ns == stamp

    assert main([*args, "stage1.steps=3"]) == 0  # other settings: trained again
    assert "reused" not in capsys.readouterr().out and lora.stat().st_mtime_ns != stamp
    stamp = lora.stat().st_mtime_ns
    assert main([*args, "stage1.steps=3", "--fresh"]) == 0
    assert json.loads((out / "bench.json").read_text())["reused"] == 0 and lora.stat().st_mtime_ns != stamp


def test_bench_jobs_run_in_worker_processes_with_the_same_figures(tmp_path, capsys):
    args = ["bench", "--quick", "--methods", "setseq,dreambooth", "--concepts", "red_star_bounce"]
    assert main([*args, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    assert "running 2 runs at a time, 1 thread(s) each" in capsys.readouterr().out
    two = json.loads((tmp_path / "two" / "bench.json").read_text())
    # In this process at the workers' thread count: the same reduction order, so the same figures (at another
    # thread count float rounding can flip a discrete score, e.g. a detected colour).
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    one = json.loads((tmp_path / "one" / "bench.json").read_text())
    assert two["jobs"] == 2 and [r["method"] for r in two["rows"]] == ["setseq", "dreambooth"]
    for a, b in zip(two["rows"], one["rows"], strict=True):
        assert (a["method"], a["concept"]) == (b["method"], b["concept"])
        differ = {c: (a[c], b[c]) for c in COLUMNS if a[c] != pytest.approx(b[c], rel=1e-3, abs=1e-4)}
        assert not differ, (a["method"], differ)
    assert main([*args, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0  # reused: no workers
    out = capsys.readouterr().out
    assert out.count("reused from an earlier bench") == 2 and "at a time" not in out
    assert main([*args, "--out", str(tmp_path / "two"), "--jobs", "0"]) == 2


def test_a_run_failing_in_a_worker_stops_the_bench_with_its_one_line_error(tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"red_star_bounce": {"file": "broken.mp4", "shape": "star"}}))
    args = ["bench", "--quick", "--suite", str(suite), "--methods", "setseq,dreambooth", "--jobs", "2"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "bench.json").exists()


def test_summary_is_mean_and_spread_per_method():
    rows = [
        {"method": "a", "mse": 0.1, "appearance": 1.0, "edit": 0.5, "tc": 0.9, "motion": 0.2},
        {"method": "a", "mse": 0.3, "appearance": 0.0, "edit": 0.5, "tc": 0.7, "motion": float("nan")},
        {"method": "b", "mse": 0.2, "appearance": 0.5, "edit": 1.0, "tc": 0.8, "motion": 0.4},
    ]
    s = summarize(rows)
    assert s["a"]["mse"]["mean"] == pytest.approx(0.2) and s["a"]["mse"]["std"] == pytest.approx(0.1)
    assert s["a"]["success"]["n"] == 0  # rows from before the edit columns: nothing to average
    assert s["a"]["motion"] == {"mean": 0.2, "std": 0.0, "n": 1}  # a failed detection is left out, counted
    assert "| a | 0.2000 ± 0.1000" in table(s)


def test_paired_counts_wins_in_each_columns_direction():
    def row(method, concept, mse, edit):
        return {"method": method, "concept": concept, "seed": 0, "mse": mse, "appearance": 0.5, "edit": edit,
                "tc": 0.9, "motion": float("nan") if concept == "c" else 0.5}  # fmt: skip

    rows = [row("setseq", "a", 0.1, 1.0), row("db", "a", 0.2, 0.5), row("setseq", "b", 0.3, 0.0)]
    rows += [row("db", "b", 0.2, 1.0), row("setseq", "c", 0.1, 1.0), row("db", "c", 0.1, 1.0)]
    rows += [row("setseq", "d", 0.0, 1.0)]  # no baseline run to pair with
    p = paired(rows, "setseq", "db")
    assert p["mse"] == (1, 1, 1)  # lower is better: a wins, b loses, c ties
    assert p["edit"] == (1, 1, 1)
    assert p["appearance"] == (0, 3, 0) and p["motion"] == (0, 2, 0)  # a NaN pair is left out


def test_checks_compare_setseq_with_the_baselines():
    def cols(edit_id, success, app, motion, kept=0.5, edit=0.5):
        return {
            "edit_id": {"mean": edit_id},
            "success": {"mean": success},
            "appearance": {"mean": app},
            "motion": {"mean": motion},
            "kept": {"mean": kept},
            "edit": {"mean": edit},
        }

    v = dict(
        checks({"setseq": cols(0.58, 0.8, 0.96, 0.9, 0.9, 0.85), "dreambooth": cols(0.6, 0.5, 1.0, 0.95)})
    )
    assert v == {
        "setseq identity on edits within 5% of dreambooth's (or above)": True,
        "setseq edit success > dreambooth's": True,
        "setseq appearance of the reproduction within 5% of dreambooth's (or above)": True,
        "setseq keeps the concept in >= 80% of edits": True,
        "setseq follows >= 80% of edits (adherence)": True,
        "setseq edit success >= 70%": True,
        "setseq edit success >= dreambooth's + 15 points": True,
        "setseq motion fidelity > every one-stage baseline's (dreambooth)": False,
    }
    # identity lost on the edits, a success gap under 15 points: both said
    v = dict(checks({"setseq": cols(0.5, 0.6, 1.0, 0.9), "dreambooth": cols(0.6, 0.5, 1.0, 0.5)}))
    assert not v["setseq identity on edits within 5% of dreambooth's (or above)"]
    assert (
        v["setseq edit success > dreambooth's"] and not v["setseq edit success >= dreambooth's + 15 points"]
    )
    assert not v["setseq keeps the concept in >= 80% of edits"] and not v["setseq edit success >= 70%"]
    v = dict(
        checks(
            {
                "setseq": cols(0.8, 0.9, 0.9, 0.9),
                "lora1": cols(0, 0, 0, 0.5),
                "textual_inversion": cols(0, 0, 0, 0.95),
            }
        )
    )
    assert v["setseq motion fidelity > every one-stage baseline's (lora1, textual_inversion)"] is False
    assert "setseq edit success > dreambooth's" not in v  # no DreamBooth run to compare with


def test_suite_with_a_missing_video_is_refused(tmp_path):
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"red_star_bounce": {"file": "gone.mp4", "shape": "star"}}))
    with pytest.raises(SetseqError, match="gone.mp4 is missing") as err:
        load_suite(suite)
    assert "\n" not in str(err.value)
    assert main(["bench", "--quick", "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2


def test_unknown_method_and_unknown_concept_are_refused(tmp_path):
    with pytest.raises(SetseqError, match="not in the suite"):
        load_suite(None, ["no_such_concept"])
    assert main(["bench", "--methods", "setseq,magic", "--out", str(tmp_path / "o")]) == 2


def _tiny_base(tiny_toy_dir):
    from setseq.infer.generate import Personalized

    return Personalized.load(None, str(tiny_toy_dir), log=lambda s: None)


def test_ceiling_refuses_a_model_with_a_lora_left_attached(tiny_toy_dir):
    """The ceiling column is the base model's: a LoRA left attached changes what is drawn, and the ceiling
    refuses such a model (even with the LoRA switched off) instead of reporting the LoRA's figures."""
    from setseq import lora as L
    from setseq.data.synthetic import CONCEPTS, caption, render
    from setseq.infer.generate import GenerateOptions
    from setseq.tools.ceiling import base_ceiling, check_no_lora

    spec = CONCEPTS["red_star_bounce"]
    reference = render(spec, 9, 32)
    pm = _tiny_base(tiny_toy_dir)
    check_no_lora(pm)  # the base model alone: accepted
    opts = GenerateOptions(seed=0, steps=2)
    before = pm.generate(caption(spec), opts)
    tr = pm.backbone.transformer
    L.inject(tr, L.LoraSpec(4, 4.0, "down", pm.backbone.info.lora_targets), seed=0)
    with torch.no_grad():
        for layer in L.get_layers(tr).values():
            layer.up.normal_(0.0, 0.5)
    after = pm.generate(caption(spec), opts)
    assert (after - before).abs().max() > 0.05 * before.abs().max()  # the LoRA draws something else
    with pytest.raises(SetseqError, match="carrying a LoRA") as err:
        base_ceiling(pm, spec, "star", reference, seed=0, steps=2)
    assert "\n" not in str(err.value)
    L.set_scales(tr, identity=0.0, motion=0.0)  # switched off, but still attached: refused all the same
    with pytest.raises(SetseqError, match="carrying a LoRA"):
        base_ceiling(pm, spec, "star", reference, seed=0, steps=2)


def test_ceiling_is_computed_once_per_key_and_cached_on_disk(tmp_path):
    """Computed once per (model, concept, seed, steps, suite), then read from the file (a stand-in model that
    draws each caption's truth: the caching, not the model, is under test)."""
    from setseq.data.synthetic import CONCEPTS, render
    from setseq.tools.ceiling import CeilingCache
    from tests.test_edits import _Renderer

    pm = _Renderer(CONCEPTS["red_star_bounce"], "red")
    loads: list[int] = []

    def pipeline():
        loads.append(1)
        return pm

    cache = CeilingCache(tmp_path / "sub" / "ceiling.json")
    reference = render(CONCEPTS["red_star_bounce"], 9, 32)
    kw = {"model": "toy", "steps": 2, "pipeline": pipeline, "log": lambda s: None}
    first = cache.ceiling("red_star_bounce", "star", reference, seed=0, **kw)
    assert first["edits"]["background_white"]["success"] and len(first["edits"]) == 8
    again = CeilingCache(cache.path).ceiling("red_star_bounce", "star", reference, seed=0, **kw)
    assert loads == [1] and again == json.loads(json.dumps(first))  # read back from the file
    other = cache.ceiling("red_star_bounce", "star", reference, seed=1, **kw)  # another seed: computed
    assert loads == [1, 1] and other["seed"] == 1
    assert len(json.loads(cache.path.read_text())["entries"]) == 2
    assert not list(cache.path.parent.glob("*.tmp*"))  # written atomically, nothing left beside it
    cache.path.write_text("{ not json")  # a broken file is an empty cache: computed again, then rewritten
    cache.ceiling("red_star_bounce", "star", reference, seed=0, **kw)
    assert loads == [1, 1, 1] and len(json.loads(cache.path.read_text())["entries"]) == 1


def test_group_tables_pool_runs_and_show_a_missing_ceiling_as_a_dash():
    from setseq.tools.bench_tables import (
        ceiling_checks,
        groups_table,
        headline,
        headline_table,
        summarize_groups,
    )

    def row(method, concept, seed, s, cs, motion_kept=1.0):
        g = {"unseen": {"n": 4, "success": s, "ceiling_success": cs, "kept": s, "ceiling_kept": cs}}
        g["motion"] = {
            "n": 3,
            "success": 0.0,
            "ceiling_success": 0.0,
            "kept": motion_kept,
            "ceiling_kept": 1.0,
        }
        return {"method": method, "concept": concept, "seed": seed, "groups": g}

    rows = [
        row("setseq", "a", 0, 0.5, 1.0),
        row("setseq", "a", 1, 1.0, 0.5),
        row("setseq", "b", 0, 0.25, 0.5),
    ]
    rows += [row("db", "a", 0, 0.0, 0.0), {"method": "db", "concept": "b", "seed": 0}]  # no groups: left out
    h = headline(rows)
    assert h["setseq"]["concepts"] == {"a": pytest.approx(1.0), "b": pytest.approx(0.5)}  # (2+4)/(4+2), 1/2
    assert h["setseq"]["mean"] == pytest.approx(0.75) and h["setseq"]["min"] == pytest.approx(0.5)
    assert h["db"]["concepts"] == {"a": None, "b": None} and h["db"]["mean"] is None
    g = summarize_groups(rows)
    assert g["setseq"]["unseen"]["n"] == 12 and g["setseq"]["unseen"]["success"] == pytest.approx(7 / 12)
    assert "| db | - | - | - | - |" in headline_table(
        h
    ) and "| setseq | 100 | 50 | 75 | 50 |" in headline_table(h)
    assert "12, 58 (67), 58 (67)" in groups_table(g)
    v = dict(ceiling_checks(g, h))
    assert v == {
        "setseq unseen-background success >= 90% of the base model's on average": False,
        "setseq unseen-background success >= 70% of the base model's on every concept": False,
        "setseq motion edits keep the concept in >= 80%": True,
    }


def test_the_shipped_ceilings_cover_the_demo_and_the_bench():
    """The package's ceilings (`setseq.tools.ceiling.SHIPPED`) hold the shipped toy model's on every concept of
    the bench's suite (the demo's among them) at seeds 0 and 1 and the full sampling steps, under today's key:
    a first demo or bench reads them and generates nothing. If the toy model or the edit suite changes, this
    fails: refresh the file with `python benchmarks/base_ceiling.py --seeds 2 --cache
    src/setseq/assets/toy/base_ceiling.json --concepts ...`."""
    from setseq.tools.ceiling import SHIPPED, CeilingCache
    from setseq.tools.demo import DEFAULT_CONCEPT

    def never():
        raise AssertionError("the ceiling was computed, not read from the shipped file")

    cache = CeilingCache(Path("/nonexistent/ceiling.json"), shipped=SHIPPED)
    suite = load_suite()
    assert DEFAULT_CONCEPT in [c.name for c in suite]
    for c in suite:
        for seed in (0, 1):
            got = cache.ceiling(c.name, c.shape, None, model="toy", seed=seed, steps=None, pipeline=never)
            assert got["concept"] == c.name and len(got["edits"]) == 8
    # Without the shipped file the same cache computes.
    with pytest.raises(AssertionError, match="computed"):
        CeilingCache(Path("/nonexistent/ceiling.json"), shipped=None).ceiling(
            DEFAULT_CONCEPT, "diamond", None, model="toy", seed=0, steps=None, pipeline=never
        )
