"""MiniMax H3 facts the shared table (`tests/test_backbones.py`) does not cover: the DiT call (one forward per
sample, t = 1 - sigma, the output negated) against the scheduler's convention and the DiT called directly;
token masking removes a token; the shapes it refuses; the folders it refuses (a wrong `_class_name`, a
`model_index.json` pipeline, a missing component)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from setseq.backbones.registry import guess_backbone, load_backbone
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds


@pytest.fixture(scope="module")
def h3_dir(tmp_path_factory):
    from setseq.backbones.minimax_h3 import build_tiny_minimax_h3

    return build_tiny_minimax_h3(tmp_path_factory.mktemp("h3") / "model")


@pytest.fixture(scope="module")
def h3(h3_dir):
    return load_backbone("minimax-h3", str(h3_dir))


def _dit_rows(bb, text: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """The DiT called directly, the pipeline's way (its layout functions, no audio rows): video rows (1, N, C')."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import (
        MiniMaxH3PrepareLayoutStep,
        MiniMaxH3SetTimestepsStep,
        patchify_video_latents,
    )

    _, _, f, h, w = x.shape
    patch = tuple(bb.transformer.config.patch_size)
    pos, tags, vid, aud, txt, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.ones(text.shape[1]), f, h, w, 0, patch, 2, 2, 0
    )
    ts, idx = MiniMaxH3SetTimestepsStep.build_row_timesteps(vid, aud, 0, 0, text.shape[1], t, t, 1.0, 1.0)
    return bb.transformer(
        hidden_states=patchify_video_latents(x, patch)[None], audio_hidden_states=torch.zeros(1, 0, 8),
        encoder_hidden_states=text, timestep=ts, timestep_indices=idx, token_tags=tags, position_ids=pos.float(),
        video_indices=vid, audio_indices=aud, text_indices=txt, return_dict=False,
    )[0]  # fmt: skip


def test_predict_is_the_dits_call_per_sample_negated(h3):
    """A batch of two prompts of different lengths at two sigmas: each sample's prediction is minus the DiT's
    own output for that sample alone, at t = 1 - sigma, with only its real tokens (no padding)."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import patchify_video_latents

    p = h3.encode_prompt(["a sks person dancing in the park", "a dog"])
    assert p.embeds.shape[0] == 2 and p.mask.sum(1).tolist()[0] > p.mask.sum(1).tolist()[1]
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(2, 24, 7, 2, 4, generator=g), torch.tensor([0.25, 0.9])
    with torch.no_grad():
        ours = h3.predict(x, sig, p)
        for i in range(2):
            ref = _dit_rows(h3, p.embeds[i : i + 1, p.mask[i]], x[i : i + 1], 1.0 - float(sig[i]))
            got = patchify_video_latents(ours[i : i + 1], (1, 2, 2))[None]
            torch.testing.assert_close(got, -ref, rtol=1e-5, atol=1e-6)


def test_objective_is_the_schedulers(h3):
    """`noisy` is the scheduler's `scale_noise` at t = 1 - sigma, and the target (noise - x0, the DiT's output
    negated) steps exactly onto x0 through the scheduler, which reads the DiT's x0 - noise."""
    sched = h3.pipe.scheduler
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 24, 7, 2, 2, generator=g), torch.randn(1, 24, 7, 2, 2, generator=g)
    sched.set_timesteps(4)
    t = sched.timesteps[-1]
    sig = (1.0 - t).reshape(1)
    xt = h3.noisy(x0, noise, sig)
    torch.testing.assert_close(xt, sched.scale_noise(x0, t, noise))
    sched._step_index = len(sched.timesteps) - 1  # the last step: to sigma 0
    x_next = sched.step(-h3.training_target(x0, noise, sig), t, xt, return_dict=False)[0]
    torch.testing.assert_close(x_next, x0, rtol=1e-5, atol=1e-5)
    assert h3.sigma_shift == 12.0 and h3.info.extra["flow_shift"] == 12.0


def test_token_masking_removes_the_token(h3):
    """The DiT has no attention mask: a dropped token's row is removed, as if the prompt did not hold it."""
    p = h3.encode_prompt(["a sks person dancing"])
    keep = torch.ones_like(p.mask)
    keep[0, 1] = False
    dropped = PromptEmbeds(p.embeds * keep[..., None], p.mask & keep)
    idx = torch.tensor([0, 2, 3])
    removed = PromptEmbeds(p.embeds[:, idx], p.mask[:, idx])
    x, sig = torch.randn(1, 24, 1, 2, 2, generator=torch.Generator().manual_seed(1)), torch.tensor([0.5])
    with torch.no_grad():
        torch.testing.assert_close(h3.predict(x, sig, dropped), h3.predict(x, sig, removed))
        assert (h3.predict(x, sig, dropped) - h3.predict(x, sig, p)).abs().max() > 1e-6


def test_shorter_clips_are_the_start_of_the_shortest_it_makes(h3, capsys):
    """A training clip's length (22) is the first 22 frames of the 124 the model makes with the same seed."""
    short = h3.generate("a dog", frames=22, steps=2, seed=3)
    assert "making 124 and keeping the first 22" in capsys.readouterr().err
    full = h3.generate("a dog", frames=124, steps=2, seed=3)
    assert short.shape == (22, 3, 32, 32) and full.shape == (124, 3, 32, 32)
    torch.testing.assert_close(short, full[:22])


def test_shapes_it_refuses(h3):
    with pytest.raises(SetseqError, match=r"17n\+5 frames .* not 13.*--frames 22"):
        h3.encode_video(torch.zeros(1, 13, 3, 32, 32))
    assert h3.encode_video(torch.zeros(1, 39, 3, 32, 32)).shape[2] == 12  # 17n + 5 -> 5n + 2
    with pytest.raises(SetseqError, match=r"at most 362 frames .* not 400.*--frames 362"):
        h3.generate("a dog", frames=400, steps=1)
    with pytest.raises(SetseqError, match="no negative prompt"):
        h3.generate("a dog", "blurry", steps=1)
    with pytest.raises(SetseqError, match="text-to-video model"):
        h3.generate("a dog", steps=1, image=torch.zeros(32, 32, 3, dtype=torch.uint8).numpy())


def test_folders_it_refuses(h3_dir, tmp_path):
    """A modular folder of another pipeline, a `model_index.json` pipeline and an incomplete copy: one line each."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "modular_model_index.json").write_text(json.dumps({"_class_name": "LTX25ModularPipeline"}))
    with pytest.raises(SetseqError, match="LTX25ModularPipeline.*MiniMaxH3ModularPipeline"):
        guess_backbone(str(other))
    with pytest.raises(SetseqError, match="not MiniMax H3's text-to-video MiniMaxH3ModularPipeline"):
        load_backbone("minimax-h3", str(other))
    classic = tmp_path / "classic"
    classic.mkdir()
    (classic / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(SetseqError, match="no modular_model_index.json .it holds a model_index.json"):
        load_backbone("minimax-h3", str(classic))
    partial = tmp_path / "partial"
    shutil.copytree(h3_dir, partial)
    shutil.rmtree(partial / "audio_vae")
    assert guess_backbone(str(partial)) == "minimax-h3"
    with pytest.raises(SetseqError, match="lacks the component folder.s. audio_vae"):
        load_backbone("minimax-h3", str(partial))
