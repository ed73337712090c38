"""Several concepts: joint training (shared basis, stitched videos at the configured rate), `setseq compose`
on a joint run and as a weighted sum of separate runs, and the bad inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from setseq.cli import main
from setseq.config_load import resolve_config
from setseq.data.cache import EncodedConcept
from setseq.errors import SetseqError
from setseq.export import load_setseq

TOY_OVERRIDES = [
    "lora.rank=4",
    "stage1.steps=2",
    "stage2.steps=2",
    "stage1.batch_size=2",
    "stage2.batch_size=2",
    "train.tensorboard=false",
    "stage1.grad_clip=1.0",
    "stage2.grad_clip=1.0",
    "stage1.lr=1e-2",
    "stage2.lr=1e-2",
    "concept.class_word=star",
]


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    from setseq.data import synthetic as S
    from setseq.data.video import write_video

    folder = tmp_path_factory.mktemp("two")
    out = []
    for name in ("red_star_bounce", "yellow_square_circling"):
        path = folder / f"{name}.mp4"
        write_video(path, S.render(S.CONCEPTS[name], frames=9, size=32, seed=0), fps=8.0)
        out.append(path)
    return out


def _joint_flags(tiny_toy_dir, videos):
    return {
        "model": {"backbone": "toy", "path": str(tiny_toy_dir)},
        "data": {"video": str(videos[0])},
        "multi": {
            "concepts": [
                {"video": str(videos[1]), "token": "qrv", "motion_token": "vkt", "class_word": "square"}
            ],
            "stitch_rate": 0.5,
        },
    }


def test_two_concepts_sharing_a_token_are_refused(two_videos):
    flags = {
        "data": {"video": str(two_videos[0])},
        "multi": {"concepts": [{"video": str(two_videos[1]), "token": "sks"}]},
    }
    with pytest.raises(SetseqError, match="share the token 'sks'") as err:
        resolve_config(None, flags, [])
    assert "\n" not in str(err.value)
    with pytest.raises(SetseqError, match="needs|at least 'video' and 'token'"):
        resolve_config(None, {"multi": {"concepts": [{"token": "qrv"}]}}, [])


def _enc(value: float, width: int, frames: int = 3) -> EncodedConcept:
    from setseq.prompts import PromptEmbeds

    p = PromptEmbeds(torch.full((1, 4, 2), value), torch.ones(1, 4, dtype=torch.bool))
    return EncodedConcept(
        torch.full((frames, 2, 1, 2, width), value), torch.full((1, 2, 3, 2, width), value), p, p, "k"
    )


@pytest.mark.parametrize("stage", [1, 2])
def test_concepts_alternate_and_stitched_videos_come_at_the_configured_rate(monkeypatch, stage):
    from setseq.train import stage1_set, stage2_sequence
    from setseq.train.loop import step_generator
    from setseq.train.recipe import Recipe

    module = stage1_set if stage == 1 else stage2_sequence
    captured = {}
    monkeypatch.setattr(module.L, "set_stage", lambda *a, **k: [])
    cfg = resolve_config(None, None, ["multi.stitch_rate=0.2", f"stage{stage}.batch_size=4"])
    a, b, ab = _enc(1.0, 2), _enc(2.0, 2), _enc(3.0, 4)
    recipe = Recipe.for_steps(SimpleNamespace(transformer=None), cfg)  # type: ignore[arg-type]
    recipe.data, recipe.concepts, recipe.stitched, recipe.prior, recipe.texts = a, [a, b], [ab], None, []
    monkeypatch.setattr(recipe, "run_stage", lambda st, params, mb, resume: captured.setdefault("mb", mb))
    (stage1_set.train_stage1 if stage == 1 else stage2_sequence.train_stage2)(recipe)
    make_batch = captured["mb"]
    n, stitched = 2000, 0
    for step in range(n):
        batch = make_batch(step, 0, step_generator(0, stage, step))
        if batch.latents.shape[-1] == 4:
            stitched += 1
            assert torch.all(batch.latents == 3.0) and torch.all(batch.prompt.embeds == 3.0)
        else:  # both concepts in every regular batch, each with its own prompt
            values = batch.latents.flatten(1)[:, 0].tolist()
            assert sorted(values) == [1.0, 1.0, 2.0, 2.0]
            assert batch.prompt.embeds[:, 0, 0].tolist() == values
    assert 0.17 < stitched / n < 0.23


def test_joint_training_writes_one_lora_knowing_every_token(tiny_toy_dir, two_videos, tmp_path, capsys):
    from setseq.train.run import train

    lines: list[str] = []
    cfg = resolve_config(None, _joint_flags(tiny_toy_dir, two_videos), TOY_OVERRIDES)
    run = train(cfg, tmp_path / "joint", progress=False, log=lines.append)
    assert any("multi-concept: 2 concepts (sks, qrv), 1 stitched pair(s)" in s for s in lines)
    assert len(list((run / "cache").glob("stitched-*.safetensors"))) == 1
    lora = load_setseq(run / "setseq.safetensors")
    assert lora.meta["tokens"] == ["sks", "zwx", "qrv", "vkt"]
    out = tmp_path / "c.mp4"
    prompt = "a sks star in zwx motion and a qrv square in vkt motion"
    assert main(["compose", str(run), "--prompt", prompt, "--out", str(out), "--steps", "2"]) == 0
    assert out.is_file() and out.with_suffix(".png").is_file()
    capsys.readouterr()
    # One concept of the pair, by its own token: no warning; neither token: a warning naming both.
    assert (
        main(
            [
                "generate",
                str(run),
                "--prompt",
                "a qrv square in vkt motion",
                "--out",
                str(out),
                "--steps",
                "2",
            ]
        )
        == 0
    )
    assert "does not contain the concept token" not in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "a square", "--out", str(out), "--steps", "2"]) == 0
    assert "does not contain the concept token 'sks' or 'qrv'" in capsys.readouterr().err


def test_weighted_sum_adds_each_runs_update_to_the_weights(tiny_toy_dir, two_videos, tmp_path):
    from setseq.backbones.toy import load_toy
    from setseq.export import merged_factors
    from setseq.infer.compose import add_weighted_sum
    from setseq.train.run import train

    runs = []
    for i, (video, tok, mtok) in enumerate(zip(two_videos, ("sks", "qrv"), ("zwx", "vkt"))):
        flags = {"model": {"backbone": "toy", "path": str(tiny_toy_dir)}, "data": {"video": str(video)}}
        cfg = resolve_config(
            None, flags, TOY_OVERRIDES + [f"concept.token={tok}", f"concept.motion_token={mtok}"]
        )
        runs.append(train(cfg, tmp_path / f"r{i}", progress=False, log=lambda s: None))
    loras = [load_setseq(r / "setseq.safetensors") for r in runs]
    bb = load_toy(str(tiny_toy_dir))
    module = loras[0].modules[0]
    before = dict(bb.transformer.named_modules())[module].weight.clone()
    n = add_weighted_sum(bb.transformer, loras, [0.5, 2.0])
    assert n == len(loras[0].modules)
    expect = before.clone()
    for lora, w in zip(loras, (0.5, 2.0)):
        d, u = merged_factors(lora, module, 1.0, 1.0)
        expect += w * (u @ d)
    assert torch.allclose(dict(bb.transformer.named_modules())[module].weight, expect, atol=1e-6)

    out = tmp_path / "sum.mp4"
    prompt = "a sks star in zwx motion and a qrv square in vkt motion"
    argv = ["compose", str(runs[0]), str(runs[1]), "--weights", "1,0.8", "--prompt", prompt]
    assert main(argv + ["--out", str(out), "--steps", "2"]) == 0 and out.is_file()
    # the same tokens twice: refused; a weight count that does not match: refused
    assert main(["compose", str(runs[0]), str(runs[0]), "--prompt", prompt, "--out", str(out)]) == 2
    assert (
        main(["compose", str(runs[0]), str(runs[1]), "--weights", "1", "--prompt", prompt, "--out", str(out)])
        == 2
    )
