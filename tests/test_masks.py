"""Subject masks (`data.mask`): read and checked like the video, cached with it, and the loss weighting and
background swaps applied exactly as configured; bad masks get one-line errors and nothing is written."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from setseq.data.masks import composite, latent_weights, load_mask, swap_colours_for
from setseq.data.synthetic import CONCEPTS, render_mask
from setseq.data.video import load_clip, write_video
from setseq.errors import SetseqError
from setseq.functional import flow_matching as fm
from setseq.tools.demo import CONCEPT_DIR, concept_mask
from setseq.train.run import train
from tests.helpers import cyan_demo_config

NAME = "cyan_diamond_bounce"
VIDEO = CONCEPT_DIR / f"{NAME}.mp4"


_cfg = cyan_demo_config


def test_mask_folder_and_video_read_back_the_exact_mask(tmp_path):
    clip = load_clip(VIDEO, frames=9)
    truth = render_mask(CONCEPTS[NAME], 9, 32)
    m = load_mask(concept_mask(NAME, tmp_path / "png"), VIDEO, clip)
    assert m.shape == (9, 32, 32) and np.array_equal(m > 0.5, truth)
    frames = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=-1)
    write_video(tmp_path / "mask.mp4", frames, fps=8.0)
    mv = load_mask(tmp_path / "mask.mp4", VIDEO, clip)
    assert ((mv > 0.5) == truth).mean() > 0.97  # lossy codec: the edges may blur


def test_bad_masks_are_refused_in_one_line(tmp_path):
    clip = load_clip(VIDEO, frames=9)
    good = concept_mask(NAME, tmp_path / "good")
    with pytest.raises(SetseqError, match="does not exist"):
        load_mask(tmp_path / "nope", VIDEO, clip)
    short = tmp_path / "short"
    short.mkdir()
    for p in sorted(good.iterdir())[:5]:
        (short / p.name).write_bytes(p.read_bytes())
    with pytest.raises(SetseqError, match="has 5 images, the video has 9 frames"):
        load_mask(short, VIDEO, clip)
    big = tmp_path / "big"
    big.mkdir()
    for p in sorted(good.iterdir()):
        Image.open(p).resize((64, 64)).save(big / p.name)
    with pytest.raises(SetseqError, match="is 64x64, the video is 32x32"):
        load_mask(big, VIDEO, clip)
    colour = tmp_path / "colour"
    colour.mkdir()
    for i, f in enumerate(clip.frames):
        Image.fromarray(f).save(colour / f"{i:04d}.png")
    with pytest.raises(SetseqError, match="is not a mask"):
        load_mask(colour, VIDEO, clip)
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(9):
        Image.fromarray(np.full((32, 32), 128, np.uint8)).save(grey / f"{i:04d}.png")
    with pytest.raises(SetseqError, match="mid-grey"):
        load_mask(grey, VIDEO, clip)


def test_latent_weights_follow_the_mask():
    mask = np.zeros((9, 32, 32), np.float32)
    mask[:, :8, :8] = 1.0  # the top-left latent cell of a 4x codec
    s, c = latent_weights(mask, (9, 8, 1, 8, 8), (1, 8, 9, 8, 8))
    assert s.shape == (9, 1, 1, 8, 8) and c.shape == (1, 1, 9, 8, 8)
    assert torch.all(s[:, 0, 0, :2, :2] == 1) and s.sum() == 9 * 4
    # a causal VAE's grouping: 9 frames -> 3 latent frames (1, then 4 and 4); a subject in any frame counts
    mask2 = np.zeros((9, 32, 32), np.float32)
    mask2[6, :, :] = 1.0
    _, c3 = latent_weights(mask2, (9, 8, 1, 8, 8), (1, 8, 3, 8, 8))
    assert c3[0, 0, :, 0, 0].tolist() == [0.0, 0.0, 1.0]


def test_composite_and_swap_colours():
    frames = np.zeros((1, 4, 4, 3), np.uint8)
    frames[..., :] = (40, 210, 220)  # cyan subject
    mask = np.zeros((1, 4, 4), np.float32)
    mask[0, :2] = 1.0
    out = composite(frames, mask, "yellow")
    assert tuple(out[0, 0, 0]) == (40, 210, 220) and tuple(out[0, 3, 3]) == (240, 220, 40)
    assert "white" in swap_colours_for(frames, mask, ["white", "green"])
    assert swap_colours_for(frames, mask, ["white", "green", "blue"]) == ["white", "green", "blue"]


def test_weighted_loss_is_the_weighted_mean():
    pred, target = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    w = torch.rand(2, 1, 2, 4, 4)
    err = (pred - target) ** 2
    want = torch.stack([(err[i] * w[i]).sum() / (w[i].expand_as(err[i])).sum() for i in range(2)]).mean()
    torch.testing.assert_close(fm.regression_loss(pred, target, None, w), want)
    ones = torch.ones_like(w)
    torch.testing.assert_close(fm.regression_loss(pred, target, None, ones), fm.regression_loss(pred, target))


def test_training_applies_the_background_weight_and_swaps_as_configured(tmp_path, monkeypatch):
    seen = []
    real = fm.regression_loss

    def spy(pred, target, weight=None, element_weight=None):
        seen.append(None if element_weight is None else element_weight.clone())
        return real(pred, target, weight, element_weight)

    monkeypatch.setattr(fm, "regression_loss", spy)
    prompts = []

    cfg = _cfg(
        tmp_path,
        "stage1.steps=2",
        "stage2.steps=1",
        "stage1.background_weight=0.25",
        "stage2.background_weight=1.0",
        "stage1.background_swap=1.0",
    )
    run = train(cfg, tmp_path / "run", progress=False, log=prompts.append)
    stage1, stage2 = seen[:2], seen[2:]
    for ew in stage1:  # 0.25 off the subject, 1 on it, nothing else
        vals = torch.unique(ew)
        assert vals.min() == pytest.approx(0.25) and vals.max() == pytest.approx(1.0)
        assert ((ew - 0.25) / 0.75).min() >= -1e-6
    assert all(ew is None for ew in stage2)
    assert any("backgrounds swapped to" in p for p in prompts)
    assert (run / "setseq.safetensors").is_file()


def test_mask_is_cached_with_the_video_and_refused_where_unusable(tmp_path):
    cfg = _cfg(tmp_path, "stage1.steps=1", "stage2.steps=1", "stage1.background_weight=0.5")
    log = []
    train(cfg, tmp_path / "a", progress=False, log=log.append)
    cache = next((tmp_path / "a" / "cache").glob("*.safetensors"))
    key = json.loads(__import__("safetensors").safe_open(str(cache), "pt").metadata()["setseq_cache_key"])
    assert key["mask_sha256"] and key["video_sha256"]
    # another mask: another cache key
    other = tmp_path / "m2"
    other.mkdir()
    for p in sorted((tmp_path / "m").iterdir()):
        img = np.asarray(Image.open(p))
        Image.fromarray(np.roll(img, 1, axis=1)).save(other / p.name)
    cfg2 = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mask=str(other)))
    train(cfg2, tmp_path / "b", progress=False, log=lambda s: None)
    assert next((tmp_path / "b" / "cache").glob("*.safetensors")).name != cache.name

    for bad, msg in (
        (
            _cfg(tmp_path, "method=dreambooth", "stage1.background_weight=0.5"),
            "method dreambooth cannot use a subject mask",
        ),
        (_cfg(tmp_path, "stage1.background_swap=0", "stage2.background_swap=0"), "no stage uses it"),
        (
            _cfg(tmp_path, "stage1.background_swap=0.5", mask=False),
            r"stage1.background_swap=0.5 needs a subject mask",
        ),
    ):
        with pytest.raises(SetseqError, match=msg):
            train(bad, tmp_path / "bad", progress=False, log=lambda s: None)
        assert not (tmp_path / "bad").exists()  # nothing written
    short = tmp_path / "short"
    short.mkdir()
    for p in sorted((tmp_path / "m").iterdir())[:4]:
        (short / p.name).write_bytes(p.read_bytes())
    cfg3 = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mask=str(short)))
    with pytest.raises(SetseqError, match="has 4 images"):
        train(cfg3, tmp_path / "bad", progress=False, log=lambda s: None)
    assert not (tmp_path / "bad").exists()
