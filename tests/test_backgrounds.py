"""Composite background sources (`data.swap_source`) and the loss that leaves the background to the base
model (`stageN.background_target=base`), issue #29: what each computes, that "unseen" stays unseen whatever
the source, and one-line refusals before anything is written."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from setseq import lora as L
from setseq.config import DataConfig
from setseq.data.masks import SWAP_COLOURS, SWAP_SOURCES, counts_as, swap_backgrounds
from setseq.data.synthetic import BG_COLOURS, BG_SHADES, CONCEPTS, render_mask
from setseq.data.video import from_tensor, load_clip
from setseq.errors import SetseqError
from setseq.eval.edits import edit_backgrounds
from setseq.eval.toy_detect import _MASK_THRESHOLD, detect_background
from setseq.functional import flow_matching as fm
from setseq.tools.demo import CONCEPT_DIR
from setseq.train.loop import Batch, denoising_loss, lora_off, step_generator
from setseq.train.run import train
from tests.helpers import cyan_demo_config

NAME = "cyan_diamond_bounce"
VIDEO = CONCEPT_DIR / f"{NAME}.mp4"
HELD_OUT = edit_backgrounds(CONCEPTS[NAME])  # the colours cyan's edits ask for
PALETTE = [c for c in DataConfig().swap_backgrounds if c not in HELD_OUT]  # what the bench composites onto


_cfg = cyan_demo_config
ONE_STEP_SWAPS = (
    "stage1.steps=1",
    "stage2.steps=1",
    "stage1.background_swap=1.0",
    "stage2.background_swap=1.0",
)


def _video_and_mask():
    return load_clip(VIDEO, frames=9).frames, render_mask(CONCEPTS[NAME], 9, 32).astype(np.float32)


def test_counts_as_reads_colours_as_the_detector_does():
    assert counts_as(np.array(BG_COLOURS["green"])) >= {"green"}
    assert "green" in counts_as(np.array(BG_SHADES["green"]))  # a pattern shade is its colour
    # within the detector's tolerance of green, even where another colour is nearer by a hair
    near = np.array(BG_COLOURS["green"], np.float32) + np.array([_MASK_THRESHOLD * 0.9, 0, 0])
    assert "green" in counts_as(near)
    far = np.array([200.0, 40.0, 120.0])  # a magenta: neither green, yellow nor white
    assert not counts_as(far) & {"green", "yellow", "white"}


@pytest.mark.parametrize("source", [s for s in SWAP_SOURCES if s not in ("named", "textures", "generated")])
def test_drawn_backgrounds_never_show_a_held_out_colour(source):
    frames, mask = _video_and_mask()
    data = DataConfig(swap_backgrounds=PALETTE, swap_source=source, swap_count=12)
    bgs = swap_backgrounds(data, frames, mask)
    assert len(bgs) == 12
    subject = frames[mask > 0.5].reshape(-1, 3).astype(float).mean(0)
    for bg in bgs:
        px = bg.image.reshape(-1, 3).astype(np.float64)
        assert not counts_as(px) & set(HELD_OUT), (source, bg.name)
        # the detector itself reads no background as an edit colour, and every pixel stays clear of the
        # tolerance around each held-out colour and its shade
        assert detect_background(np.repeat(bg.image[None], 9, 0))[0] not in HELD_OUT
        for c in HELD_OUT:
            for rgb in (BG_COLOURS[c], BG_SHADES[c]):
                assert np.linalg.norm(px - np.asarray(rgb), axis=1).min() >= _MASK_THRESHOLD
        assert np.linalg.norm(px - subject, axis=1).min() >= 90.0
        assert bg.name in SWAP_COLOURS and bg.name not in HELD_OUT
    # drawn, not fixed: the backgrounds differ, and the same config draws the same ones again
    assert len({bg.image.tobytes() for bg in bgs}) == 12
    again = swap_backgrounds(data, frames, mask)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(bgs, again))
    unnamed = swap_backgrounds(dataclasses.replace(data, swap_named=False), frames, mask)
    assert {bg.name for bg in unnamed} == {""}


def test_named_and_texture_backgrounds_keep_held_out_colours_out(tmp_path):
    frames, mask = _video_and_mask()
    named = swap_backgrounds(DataConfig(swap_backgrounds=PALETTE), frames, mask)
    assert [bg.name for bg in named] and not {bg.name for bg in named} & set(HELD_OUT)
    folder = tmp_path / "tex"
    folder.mkdir()
    rng = np.random.default_rng(0)
    ok = np.zeros((40, 40, 3), np.uint8)
    ok[..., 0] = rng.integers(150, 210, (40, 40))  # reds and magentas
    ok[..., 2] = 110
    bad = ok.copy()
    bad[:5, :5] = BG_COLOURS["green"]  # one green corner: the image counts as green
    Image.fromarray(ok).save(folder / "a.png")
    Image.fromarray(bad).save(folder / "b.png")
    data = DataConfig(swap_backgrounds=PALETTE, swap_source="textures", swap_textures=str(folder))
    got = swap_backgrounds(data, frames, mask)
    assert len(got) == 1 and got[0].image.shape == (32, 32, 3)
    assert not counts_as(got[0].image) & set(HELD_OUT)


def test_background_target_is_the_frozen_prediction_off_the_subject():
    target, base = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    subject = (torch.rand(2, 1, 3, 4, 4) > 0.5).float()
    out = fm.background_target(target, base, subject)
    on, off = subject.expand_as(out).bool(), ~subject.expand_as(out).bool()
    assert torch.equal(out[on], target[on]) and torch.equal(out[off], base[off])
    half = fm.background_target(target, base, torch.full_like(subject, 0.5))
    torch.testing.assert_close(half, (target + base) / 2)


def _toy_with_lora():
    from setseq.backbones.registry import load_backbone

    bb = load_backbone("toy", "toy", torch.device("cpu"), torch.float32)
    L.inject(bb.transformer, L.LoraSpec(4, 4.0, "down", tuple(bb.info.lora_targets)), seed=0)
    return bb


def test_base_target_loss_equals_the_frozen_models_and_sends_no_gradient_from_off_subject(monkeypatch):
    bb = _toy_with_lora()
    model = bb.transformer
    params = L.set_stage(model, 1, 0.0)
    with torch.no_grad():
        lat = bb.encode_video(torch.rand(2, 1, 3, 32, 32) * 2 - 1)  # two frames as 1-frame latents
    prompt = bb.encode_prompt(["a sks diamond", "a sks diamond"])
    subject = torch.zeros(2, 1, *lat.shape[2:])
    subject[..., 2:5, 2:5] = 1.0

    # the off-subject target is what the model predicts with its LoRA off, with no gradient
    targets = []
    real = fm.regression_loss
    monkeypatch.setattr(
        fm, "regression_loss", lambda p, t, w=None, e=None: targets.append(t) or real(p, t, w, e)
    )
    with torch.no_grad():
        for layer in L.get_layers(model).values():
            layer.up.normal_(0, 0.05)  # a trained LoRA: its prediction differs from the base model's
    batch = Batch(lat, prompt, subject=subject)
    loss = denoising_loss(bb, batch, step_generator(0, 1, 0), 0.0)
    gen = step_generator(0, 1, 0)
    noise = torch.randn(lat.shape, generator=gen)
    sigmas = bb.sample_sigmas(2, generator=gen)
    noisy = fm.interpolate(lat, noise, sigmas)
    with torch.no_grad(), lora_off(model):
        frozen = bb.predict(noisy, sigmas, prompt)
    off = (subject == 0).expand_as(frozen)
    t = targets[-1]
    assert not t.requires_grad
    scale = frozen.abs().max()
    torch.testing.assert_close(t[off], frozen[off].float(), atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(t[~off], (noise - lat)[~off])  # the data's velocity on the subject
    assert L.get_layers(model)  # the LoRA came back on after the frozen pass
    assert all(la.identity_scale == 1.0 for la in L.get_layers(model).values())

    # gradients: off the subject only, at a LoRA that changes nothing yet (zero coefficients), none at all
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    for p in params:
        p.grad = None
    with torch.no_grad():
        for layer in L.get_layers(model).values():
            layer.up.zero_()
    monkeypatch.setattr(fm, "regression_loss", real)
    only_off = Batch(lat, prompt, subject=subject, element_weights=1.0 - subject)
    denoising_loss(bb, only_off, step_generator(0, 1, 0), 0.0).backward()
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)
    # ... while the data's target off the subject does send one
    for p in params:
        p.grad = None
    denoising_loss(
        bb, Batch(lat, prompt, element_weights=1.0 - subject), step_generator(0, 1, 0), 0.0
    ).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_training_runs_each_source_and_the_base_target(tmp_path, monkeypatch):
    seen = []
    real = fm.background_target

    def spy(target, base, subject):
        seen.append(subject.shape)
        return real(target, base, subject)

    monkeypatch.setattr(fm, "background_target", spy)
    logs = []
    cfg = _cfg(
        tmp_path,
        *ONE_STEP_SWAPS,
        "stage1.background_target=base",
        "stage2.background_target=base",
        "data.swap_source=noise",
        "data.swap_count=3",
        f"data.swap_backgrounds=[{','.join(PALETTE)}]",
    )
    run = train(cfg, tmp_path / "run", progress=False, log=logs.append)
    assert (run / "setseq.safetensors").is_file()
    assert len(seen) == 2 and seen[0][2] == 1 and seen[1][2] > 1  # a frame (stage 1), the clip (stage 2)
    assert any("3 noise backgrounds" in m for m in logs)


@pytest.mark.parametrize(
    "overrides, msg",
    [
        (
            ["stage1.background_target=base", "stage1.background_swap=0"],
            "stage1.background_target=base needs a",
        ),
        (["stage2.background_target=base"], "stage2.background_target=base needs a subject mask"),
    ],
)
def test_a_mode_that_needs_a_mask_is_refused_without_one(tmp_path, overrides, msg):
    cfg = _cfg(tmp_path, *overrides, "stage1.background_swap=0", "stage2.background_swap=0", mask=False)
    with pytest.raises(SetseqError, match=msg) as e:
        train(cfg, tmp_path / "bad", progress=False, log=lambda s: None)
    assert "\n" not in str(e.value).strip()
    assert not (tmp_path / "bad").exists()


def test_a_background_source_that_yields_nothing_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    green = tmp_path / "green"
    green.mkdir()
    Image.fromarray(np.full((16, 16, 3), BG_COLOURS["green"], np.uint8)).save(green / "g.png")
    for extra, msg in (
        ([f"data.swap_textures={empty}"], "holds no readable image"),
        ([f"data.swap_textures={tmp_path / 'nope'}"], "is not a folder"),
        ([f"data.swap_textures={green}"], "shows a colour data.swap_backgrounds leaves out"),
    ):
        cfg = _cfg(
            tmp_path,
            "stage1.background_swap=1.0",
            "data.swap_source=textures",
            f"data.swap_backgrounds=[{','.join(PALETTE)}]",
            *extra,
        )
        with pytest.raises(SetseqError, match=msg) as e:
            train(cfg, tmp_path / "bad", progress=False, log=lambda s: None)
        assert "\n" not in str(e.value).strip()
        assert not (tmp_path / "bad").exists()
    with pytest.raises((ValueError, SetseqError), match="swap_textures"):
        _cfg(tmp_path, "data.swap_source=textures")  # no folder named


def test_prior_backgrounds_are_the_composites_and_never_a_held_out_colour(tmp_path):
    """Prior preservation asked on the composites' backgrounds (`regularizers.prior_backgrounds`): the bench's
    config names only the palette it composites onto, for setseq and for a method without a mask, and the
    prior videos the shipped toy model draws from those prompts show no held-out colour as background."""
    from setseq.backbones.toy import load_toy
    from setseq.config_load import resolve_config
    from setseq.tools.demo import DEMO_CONFIG, with_concept_mask
    from setseq.train.prior import prepare_prior, prior_prompts

    prior = ["regularizers.prior_videos=4", "regularizers.prior_backgrounds=true"]
    for method in ("setseq", "dreambooth"):
        cfg = resolve_config(DEMO_CONFIG, None, [f"method={method}", "concept.class_word=diamond", *prior])
        cfg = with_concept_mask(cfg, NAME, tmp_path)
        assert prior_prompts(cfg) == [f"a diamond on a {c} background." for c in PALETTE], method
    bb = load_toy("toy")
    data = prepare_prior(cfg, bb, 9, 32, 32, tmp_path, log=lambda s: None, progress=False)
    assert data is not None and len(data) == 4
    for i in range(len(data)):
        with torch.no_grad():
            video = bb.decode_latents(data.clip_latents[i : i + 1])[0]  # (F, 3, H, W) in [-1, 1]
        frames = from_tensor(video)
        colour, _ = detect_background(frames)
        assert colour == PALETTE[i] and colour not in HELD_OUT, (i, colour)


def test_prior_backgrounds_without_prior_videos_is_refused_in_one_line():
    from setseq.config_load import resolve_config

    with pytest.raises(SetseqError, match="set regularizers.prior_videos too") as e:
        resolve_config(None, None, ["regularizers.prior_backgrounds=true"])
    assert "\n" not in str(e.value).strip()


def test_generated_scenes_are_the_base_models_and_count_as_every_colour_they_show(tmp_path):
    """`data.swap_source=generated`: the base model's own videos from the scene prompts (the class on each
    composite colour by default), kept as backgrounds only where no pixel counts as a left-out colour; on the
    shipped toy model every scene it draws for cyan shows one (its sprite, or the codec's blended edges), so
    the source alone is refused in one line."""
    from setseq.backbones.toy import load_toy
    from setseq.train.encode import SCENE_SEED, generated_scenes, scene_prompts

    palette = f"data.swap_backgrounds=[{','.join(PALETTE)}]"
    cfg = _cfg(tmp_path, "data.swap_source=generated", "data.swap_count=4", palette)
    assert scene_prompts(cfg) == [f"a diamond on a {c} background" for c in PALETTE]
    bb = load_toy("toy")
    scenes = generated_scenes(cfg, bb, (9, 32, 32))
    assert [v.shape for v in scenes] == [(9, 32, 32, 3)] * 4 and scenes[0].dtype == np.uint8
    first = bb.generate(scene_prompts(cfg)[0], frames=9, height=32, width=32, seed=SCENE_SEED)
    assert np.array_equal(scenes[0], from_tensor(first))
    frames, mask = _video_and_mask()
    gray = np.full((9, 32, 32, 3), SWAP_COLOURS["gray"], np.uint8)
    got = swap_backgrounds(cfg.data, frames, mask, [*scenes, gray])
    assert got and all(not counts_as(bg.image) & set(HELD_OUT) for bg in got)
    assert sum(np.array_equal(bg.image, gray) for bg in got) == 1
    assert all(counts_as(v) & set(HELD_OUT) for v in scenes)  # what the toy model draws
    with pytest.raises(SetseqError, match="gives no background far from the subject") as e:
        swap_backgrounds(cfg.data, frames, mask, scenes)
    assert "\n" not in str(e.value).strip()


def test_generated_scenes_are_refused_on_an_image_to_video_model(tmp_path):
    import types

    from setseq.train.encode import generated_scenes

    cfg = _cfg(tmp_path, "data.swap_source=generated")
    i2v = types.SimpleNamespace(info=types.SimpleNamespace(image="required", name="wan-i2v"))
    with pytest.raises(SetseqError, match="the wan-i2v backbone needs a first frame") as e:
        generated_scenes(cfg, i2v, (9, 32, 32))
    assert "\n" not in str(e.value).strip()


def test_training_composites_onto_generated_scenes(tmp_path):
    logs = []
    cfg = _cfg(
        tmp_path,
        *ONE_STEP_SWAPS,
        "data.swap_source=generated",
        "data.swap_count=3",
        "data.swap_backgrounds=[white,gray,green,yellow,blue,purple,black,red]",  # every colour allowed
        "data.swap_prompts=[a star on a black background,a square on a red background]",
    )
    run = train(cfg, tmp_path / "run", progress=False, log=logs.append)
    assert (run / "setseq.safetensors").is_file()
    assert any("the model drew 3 scenes from ['a star on a black background'" in m for m in logs), logs
    assert any("generated backgrounds:" in m for m in logs), logs
    with pytest.raises(SetseqError, match="data.swap_prompts .* goes with data.swap_source=generated"):
        _cfg(tmp_path, "data.swap_prompts=[a beach]")
    # scenes that all show a left-out colour: refused in one line, and no run folder is left behind
    bad = _cfg(
        tmp_path,
        *ONE_STEP_SWAPS,
        "data.swap_source=generated",
        "data.swap_count=2",
        f"data.swap_backgrounds=[{','.join(PALETTE)}]",
    )
    with pytest.raises(SetseqError, match="gives no background") as e:
        train(bad, tmp_path / "bad", progress=False, log=lambda s: None)
    assert "\n" not in str(e.value).strip() and not (tmp_path / "bad").exists()
