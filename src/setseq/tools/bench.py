"""`setseq bench`: the method and its baselines x a suite of dynamic concepts x seeds, on the toy world.

For every (method, concept, seed): personalize the toy model with the demo recipe (`assets/toy-demo.yaml`)
in that method's mode (`setseq.train.methods`), generate the concept reproduced and its edit suite (8 edits:
plain and patterned backgrounds, other motions, a new context; `setseq.eval.edits`), and score them with the
toy world's detectors. The reproduction gives MSE to the reference frames (and, as `mse_off`, the MSE of the
same prompt and seed with the LoRA off: what a personalization that learned nothing scores), appearance
fidelity, temporal consistency (TC) and motion fidelity (trajectory similarity); the edits give adherence (for C-T), identity on
the edits (for ID: the paper scores both on the same edited videos), the share of edits that kept the concept,
edit success (followed and kept) and motion on the edits that keep it. Every figure is a mean +- standard
deviation over concepts x seeds. Outputs in `--out`: `bench.json` (every run, every edit's scores and the
summary), `bench.md` (the table, the per-kind table and the checks) and each run's videos.

A suite is a JSON file `{name: {"file": mp4 relative to the file, "shape": class word, "caption": ...}}`;
the default is the 10 concepts shipped in `assets/concepts/`.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from setseq.config import METHODS
from setseq.config_load import resolve_config
from setseq.errors import SetseqError
from setseq.io import write_json
from setseq.runtime import quiet_libraries
from setseq.tools.bench_score import Concept, add_groups, load_suite, score_run
from setseq.tools.bench_tables import (
    COLUMNS,
    ceiling_checks,
    checks,
    headline,
    paired,
    summarize,
    summarize_groups,
    summarize_kinds,
    write_markdown,
)
from setseq.tools.ceiling import CeilingCache, model_fingerprint
from setseq.tools.demo import DEMO_CONFIG, with_concept_mask
from setseq.train.run import train

ROW_FILE = "row.json"


def _reusable(here: Path, key: dict) -> dict | None:
    """The scores of a finished run in `here` made with exactly these settings, or None."""
    try:
        saved = json.loads((here / ROW_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not _same_config(saved.get("config"), key["config"]):
        return None
    if any(saved.get(k) != v for k, v in key.items() if k != "config"):
        return None
    if not (here / "run" / "lora_diffusers.safetensors").is_file():
        return None
    row = saved.get("row")
    return row if isinstance(row, dict) and all(c in row for c in COLUMNS) else None


def _same_config(saved: object, current: str) -> bool:
    """Whether a run's saved config YAML is the config `current` (YAML) resolves to, both read by this
    version of setseq: a config field added since the run was made takes its default on both sides."""

    if not isinstance(saved, str):
        return False
    try:
        old = resolve_config(None, yaml.safe_load(saved) or {})
    except Exception:  # a field this version no longer has, or a broken file: not the same run
        return False
    return old.to_yaml() == resolve_config(None, yaml.safe_load(current) or {}).to_yaml()


def _trained(run_dir: Path, config_yaml: str, method: str) -> bool:
    """Whether `run_dir` holds a finished training run of exactly this config (not scored yet): its outputs
    are written last, once training is done."""
    try:
        same = _same_config((run_dir / "config.yaml").read_text(), config_yaml)
    except OSError:
        return False
    done = (run_dir / "lora_diffusers.safetensors").is_file()
    if method == "textual_inversion":
        done = done and any(run_dir.glob("embedding_*.safetensors"))
    return same and done


@dataclass
class _Job:
    """One (method, concept, seed) run to train (unless trained already) and score."""

    method: str
    concept: Concept
    seed: int
    here: Path
    cfg: Any
    key: dict
    model: str
    gen_steps: int | None
    fresh: bool
    keep_runs: bool


def _worker_init(threads: int) -> None:
    """A bench worker process: the libraries' chatter off, and its share of the CPU threads."""

    quiet_libraries()
    torch.set_num_threads(threads)


def _run_one(job: _Job) -> tuple[dict, str]:
    """Train (or find trained) and score one run; writes its row file. Returns the row and a note."""
    t = time.perf_counter()
    run_dir = job.here / "run"
    note = ""
    # A run stopped between its training and its scores: score it now.
    if not job.fresh and _trained(run_dir, job.key["config"], job.method):
        note = "trained by an earlier bench, scored now"
    else:
        if job.here.exists():
            shutil.rmtree(job.here)
        train(job.cfg, run_dir, progress=False, log=lambda s: None)
    scores = score_run(run_dir, job.concept, job.gen_steps, job.here)
    if not job.keep_runs:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(run_dir / "cache", ignore_errors=True)
    row = {
        "method": job.method,
        "concept": job.concept.name,
        "seed": job.seed,
        **scores,
        "seconds": None if note else round(time.perf_counter() - t, 1),
    }
    write_json(job.here / ROW_FILE, {**job.key, "row": row})
    return row, note


def _execute(
    todo: list[tuple[int, _Job]],
    slots: list[dict | None],
    jobs: int,
    report: Callable[[int, dict, str], None],
    log: Callable[[str], None],
) -> None:
    """Train and score the runs of `todo` into `slots` (by plan index): in this process, or `jobs` at a time
    in worker processes that split the CPU threads."""
    if jobs <= 1 or len(todo) <= 1:
        for k, job in todo:
            row, note = _run_one(job)
            slots[k] = row
            report(k, row, note)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        log(f"running {min(jobs, len(todo))} runs at a time, {threads} thread(s) each")
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(_run_one, job): k for k, job in todo}
            try:
                for fut in as_completed(futures):
                    k = futures[fut]
                    row, note = fut.result()
                    slots[k] = row
                    report(k, row, note)
            except BaseException:
                # A failed run stops the bench as it does without workers: runs not started are dropped
                # (the finished ones are on disk and reused next time), not trained before the error shows.
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _check_options(methods: list[str], seeds: int, first_seed: int, jobs: int) -> None:
    for m in methods:
        if m not in METHODS:
            raise SetseqError(f"unknown method {m!r}", f"use some of: {', '.join(METHODS)}")
    if seeds < 1:
        raise SetseqError(f"--seeds must be at least 1, got {seeds}")
    if first_seed < 0:
        raise SetseqError(f"--first-seed must be 0 or more, got {first_seed}")
    if jobs < 1:
        raise SetseqError(f"--jobs must be at least 1, got {jobs}")


def _run_config(method: str, concept: Concept, seed: int, model: str, extra: list[str], masks: Path):
    """The demo recipe for one (method, concept, seed), with the concept's exact mask where the method uses
    one (written under `masks`)."""
    cfg = resolve_config(
        DEMO_CONFIG,
        {"data": {"video": str(concept.video)}},
        [
            f"method={method}",
            f"train.seed={seed}",
            f"concept.class_word={concept.shape}",
            f"model.path={model}",
            *extra,
        ],
    )
    return with_concept_mask(cfg, concept.name, masks)


def run_bench(
    out: str | Path,
    *,
    methods: list[str] | None = None,
    concepts: list[str] | None = None,
    seeds: int = 2,
    first_seed: int = 0,
    quick: bool = False,
    suite: str | Path | None = None,
    model: str = "toy",
    overrides: list[str] | None = None,
    keep_runs: bool = False,
    fresh: bool = False,
    jobs: int = 1,
    ceiling_cache: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the bench into `out`; returns what `bench.json` holds.

    Each run's edits are also reported in groups (`setseq.eval.edits.summarize_groups`) beside the base
    model's ceiling on the same edits, read from (or computed once into) the JSON file `ceiling_cache`
    (default `setseq.tools.ceiling.default_cache_path()`); the headline is success on unseen backgrounds as a share
    of that ceiling, per concept and averaged.

    A run already finished in `out` with the same settings (its resolved config and generation steps) is
    reused, not trained again, unless `fresh`: an interrupted bench continues where it stopped, and a larger
    bench (more methods, concepts or seeds) extends a smaller one in the same folder. The toy model's weights
    are part of the settings; setseq's own code is not, so pass `fresh` after changing it. `jobs` > 1 trains
    that many runs at a time in worker processes, splitting the CPU threads between them (a small model
    uses 2 cores better as 2 one-thread runs than as one two-thread run); the figures are the same.
    """
    methods = methods or list(METHODS)
    _check_options(methods, seeds, first_seed, jobs)
    suite_concepts = load_suite(suite, concepts)
    if quick:
        suite_concepts, seeds = suite_concepts[:2], 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = _bench_overrides(quick, overrides)
    gen_steps = 4 if quick else None
    t0 = time.perf_counter()
    # Seed-major: a bench stopped early holds every concept's comparison at the first seeds.
    plan = list(itertools.product(range(first_seed, first_seed + seeds), suite_concepts, methods))
    report = _reporter(len(plan), log)
    slots: list[dict | None] = [None] * len(plan)
    cfgs, todo = _reuse_or_queue(plan, out, model, extra, gen_steps, fresh, keep_runs, slots, report)
    reused = len(plan) - len(todo)
    _execute(todo, slots, jobs, report, log)
    done = [
        (r, plan[k][1], cfgs[k], out / "runs" / plan[k][2] / f"{plan[k][1].name}-seed{plan[k][0]}")
        for k, r in enumerate(slots)
        if r is not None
    ]
    add_groups(done, CeilingCache(ceiling_cache), model, gen_steps, log)
    rows = [r for r, *_ in done]
    tables, verdicts = _tables(rows)
    result = {
        "quick": quick,
        "model": model,
        "methods": methods,
        "concepts": [c.name for c in suite_concepts],
        "seeds": seeds,
        "first_seed": first_seed,
        "overrides": extra,
        "rows": rows,
        "reused": reused,
        "jobs": jobs,
        **tables,
        "ceiling_cache": str(CeilingCache(ceiling_cache).path),
        "checks": [{"claim": c, "holds": v} for c, v in verdicts],
        "paired": {m: paired(rows, "setseq", m) for m in methods if m != "setseq" and "setseq" in methods},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "bench.json", result)
    log(write_markdown(out / "bench.md", result, verdicts))
    return result


def _bench_overrides(quick: bool, overrides: list[str] | None) -> list[str]:
    """The overrides of every run: --quick's steps, the user's, then what a bench run has no use for
    (TensorBoard, resume points before a stage's end, old checkpoints)."""
    extra = ["stage1.steps=4", "stage2.steps=4"] if quick else []
    extra += list(overrides or [])
    return extra + ["train.tensorboard=false", "train.checkpoint_every=100000", "train.keep_checkpoints=1"]


def _reporter(total: int, log: Callable[[str], None]) -> Callable[[int, dict, str], None]:
    """report(k, row, note): one line per finished (or reused) run, its scores and time."""

    def report(k: int, row: dict, note: str) -> None:
        took = note or f"{row['seconds']:.0f} s"
        log(
            f"[{k + 1}/{total}] {row['method']:10s} {row['concept']:24s} seed {row['seed']}: "
            + " ".join(f"{c} {row[c]:.3f}" for c in COLUMNS)
            + f"  ({took})"
        )

    return report


def _reuse_or_queue(
    plan: list[tuple[int, Concept, str]],
    out: Path,
    model: str,
    extra: list[str],
    gen_steps: int | None,
    fresh: bool,
    keep_runs: bool,
    slots: list[dict | None],
    report: Callable[[int, dict, str], None],
) -> tuple[list[Any], list[tuple[int, _Job]]]:
    """Each planned run's config, and the jobs to train: a run `out` already holds with the same settings
    (config, generation steps, model weights) fills its slot in `slots` instead, unless `fresh`."""
    weights = model_fingerprint(model)
    cfgs: list[Any] = []
    todo: list[tuple[int, _Job]] = []
    for k, (seed, concept, method) in enumerate(plan):
        here = out / "runs" / method / f"{concept.name}-seed{seed}"
        cfg = _run_config(method, concept, seed, model, extra, out / "masks" / concept.name)
        cfgs.append(cfg)
        key = {"config": cfg.to_yaml(), "gen_steps": gen_steps, "weights": weights}
        row = None if fresh else _reusable(here, key)
        if row is not None:
            slots[k] = row
            report(k, row, "reused from an earlier bench")
        else:
            todo.append((k, _Job(method, concept, seed, here, cfg, key, model, gen_steps, fresh, keep_runs)))
    return cfgs, todo


def _tables(rows: list[dict]) -> tuple[dict[str, Any], list[tuple[str, bool]]]:
    """bench.json's tables (per method, per kind of concept, edit groups, headline), and the claims checked."""
    summary = summarize(rows)
    groups, heads = summarize_groups(rows), headline(rows)
    tables = {"summary": summary, "kinds": summarize_kinds(rows), "groups": groups, "headline": heads}
    return tables, checks(summary) + ceiling_checks(groups, heads)
