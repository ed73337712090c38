"""A run folder written before the recipe object (issue #32), killed in stage 2, resumes with today's code and
generates, bit-identical to an uninterrupted run of today's code. The folder, with its tiny toy model and clip,
is `tests/fixtures/pre_redesign_run/` (made by `tests/fixtures/make_pre_redesign_run.py` with the old code)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from setseq.config_load import resolve_config
from setseq.infer.generate import GenerateOptions, Personalized
from setseq.train.run import train
from setseq.train.setup import resumed_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_redesign_run"


def _sample(run: Path) -> torch.Tensor:
    p = Personalized.load(run, log=lambda s: None)
    return p.generate("a sks person", GenerateOptions(steps=2, seed=3))


def test_a_run_from_before_the_recipe_object_resumes_to_the_uninterrupted_result(tmp_path):
    model, clip = tmp_path / "model", tmp_path / "clip.mp4"
    shutil.copytree(FIXTURE / "model", model, copy_function=shutil.copyfile)  # (dates as a checkout)
    shutil.copy(FIXTURE / "clip.mp4", clip)
    old = Path(shutil.copytree(FIXTURE / "run", tmp_path / "old run"))
    assert sorted(p.name for p in (old / "checkpoints").iterdir())[-1] == "stage2-000001"
    recorded_key = json.loads((old / "checkpoints" / "stage2-000001" / "state.json").read_text())["cache_key"]
    kept = {p: p.stat().st_mtime_ns for p in (old / "checkpoints").rglob("*.safetensors")}

    # Resumed (as `setseq train --resume RUN --video V --model M`): its cache, key and checkpoints are read.
    cfg = resumed_config(old, video=str(clip), model=str(model))
    train(cfg, old, resume=True, progress=False, log=lambda s: None)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # resumed, not started over
    assert (old / "cache" / f"{recorded_key}.safetensors").is_file()
    assert "stage2-000003" in {p.name for p in (old / "checkpoints").iterdir()}

    # Uninterrupted, from the same config, in a fresh folder.
    flags = {"model": {"path": str(model)}, "data": {"video": str(clip)}}
    fresh = tmp_path / "fresh"
    train(resolve_config(FIXTURE / "run" / "config.yaml", flags), fresh, progress=False, log=lambda s: None)

    for name in ("setseq.safetensors", "lora_diffusers.safetensors"):
        a, b = load_file(str(fresh / name)), load_file(str(old / name))
        assert a.keys() == b.keys() and a, name
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    video = _sample(old)
    assert video.abs().max() > 0 and torch.equal(video, _sample(fresh))
