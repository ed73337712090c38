"""The frozen model's target only beyond a band around the subject's path (`stageN.background_band`, issue
#29): which latent positions keep the data's target, which get the frozen model's, that no gradient comes
from beyond the band, and that training hands the band (not the per-frame subject) to the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from setseq import lora as L
from setseq.config import StageConfig
from setseq.data.masks import latent_weights
from setseq.data.synthetic import CONCEPTS, render_mask
from setseq.functional import flow_matching as fm
from setseq.train.loop import Batch, denoising_loss, step_generator
from setseq.train.run import train
from tests.helpers import cyan_demo_config


def _brute_band(subject: np.ndarray, cells: int) -> np.ndarray:
    """(f, h, w) -> (h, w): 1 where some frame's subject lies within `cells` (Chebyshev) of the position."""
    _, h, w = subject.shape
    out = np.zeros((h, w))
    for _t, y, x in zip(*np.nonzero(subject)):
        out[max(0, y - cells) : y + cells + 1, max(0, x - cells) : x + cells + 1] = 1.0
    return out


@pytest.mark.parametrize("cells", [0, 1, 2])
def test_band_is_the_subjects_path_over_every_frame_widened_by_k_cells(cells):
    subject = torch.zeros(2, 1, 3, 8, 8)
    for t in range(3):  # sample 0 moves along the diagonal; sample 1 sits still at a corner, a soft share
        subject[0, 0, t, 1 + 2 * t, 1 + 2 * t] = 1.0
        subject[1, 0, t, 7, 0] = 0.25
    band = fm.subject_band(subject, cells)
    assert band.shape == subject.shape
    for b in range(2):
        want = _brute_band(subject[b, 0].numpy(), cells)
        for t in range(3):  # the same band at every frame: where the subject is at ANY frame of the clip
            np.testing.assert_array_equal(band[b, 0, t].numpy(), want)
    assert band[0, 0, 0, 5, 5] == 1.0 and subject[0, 0, 0, 5, 5] == 0.0  # frame 2's place, kept at frame 0
    assert band[0, 0, 0, 0, 7] == 0.0  # far from the path: the frozen model's
    assert torch.all(band >= (subject > 0).float())  # the subject itself is always inside


def test_band_refuses_a_negative_width_and_the_key_checks_it():
    with pytest.raises(ValueError, match=">= 0"):
        fm.subject_band(torch.ones(1, 1, 1, 2, 2), -1)
    with pytest.raises(ValueError, match="background_band"):
        StageConfig(background_band=-2)


def test_in_the_band_the_datas_target_beyond_it_the_frozen_models_and_no_gradient_from_beyond():
    from setseq.backbones.registry import load_backbone

    bb = load_backbone("toy", "toy", torch.device("cpu"), torch.float32)
    L.inject(bb.transformer, L.LoraSpec(4, 4.0, "down", tuple(bb.info.lora_targets)), seed=0)
    params = L.set_stage(bb.transformer, 1, 0.0)  # its coefficients start at zero: the LoRA changes nothing
    with torch.no_grad():
        lat = bb.encode_video(torch.rand(1, 3, 3, 32, 32) * 2 - 1)  # a 3-frame clip
    prompt = bb.encode_prompt(["a sks diamond"])
    subject = torch.zeros(1, 1, *lat.shape[2:])
    subject[0, 0, 0, 1, 1] = subject[0, 0, 2, 5, 5] = 1.0  # at one place in frame 0, another in frame 2
    band = fm.subject_band(subject, 1)
    beyond = band == 0

    def grads(element_weights):
        for p in params:
            p.grad = None
        batch = Batch(lat, prompt, subject=band, element_weights=element_weights)
        denoising_loss(bb, batch, step_generator(0, 1, 0), 0.0).backward()
        return [p.grad for p in params if p.grad is not None]

    # the loss counted beyond the band alone: its target is the frozen model's, equal to a zero LoRA's output
    g = grads(beyond.float())
    assert g and all(torch.count_nonzero(x) == 0 for x in g)
    # within the band, off the subject (frame 1 has no subject at all): the data's target, so a gradient
    off_subject_in_band = (band == 1) & (subject == 0)
    assert off_subject_in_band[0, 0, 1].any()
    assert any(torch.count_nonzero(x) > 0 for x in grads(off_subject_in_band.float()))


def test_training_hands_the_band_to_the_loss(tmp_path, monkeypatch):
    seen = []
    real = fm.background_target
    monkeypatch.setattr(fm, "background_target", lambda t, b, s: seen.append(s.clone()) or real(t, b, s))
    overrides = [f"stage{n}.{k}" for n in (1, 2) for k in ("background_target=base", "background_band=1")]
    cfg = cyan_demo_config(tmp_path, "stage1.steps=1", "stage2.steps=1", *overrides)
    train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert len(seen) == 2
    mask = render_mask(CONCEPTS["cyan_diamond_bounce"], 9, 32).astype(np.float32)
    _, clip = latent_weights(mask, (9, 8, 1, 8, 8), (1, 8, 9, 8, 8))
    want = fm.subject_band(clip, 1)
    stage1, stage2 = seen
    assert stage2.shape[2] == 9 and torch.equal(stage2, want.expand_as(stage2))
    assert stage1.shape[2] == 1 and torch.equal(stage1, want[:, :, :1].expand_as(stage1))
    # the band is more than the subject in any one frame, and less than the whole frame
    assert 0 < want.mean() < 1 and torch.all(want.sum((-1, -2)) > (clip > 0).float().sum((-1, -2)))
