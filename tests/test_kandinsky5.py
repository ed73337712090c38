"""Kandinsky 5 T2V facts the shared backbone table (`tests/test_backbones.py`) does not cover: our DiT call is the
pipeline's, prompt by prompt (the DiT has no text mask); the tiny builder's re-drawn modulation; image-to-video
and look-alike checkpoints refused in one line; ComfyUI's names."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from setseq.backbones.registry import guess_backbone, load_backbone
from setseq.data.video import write_video
from setseq.errors import SetseqError
from setseq.export import export_tensors, load_setseq
from setseq.prompts import PromptEmbeds
from tests.helpers import moving_square_video
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_export import fake_run


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from setseq.backbones.kandinsky5 import build_tiny_kandinsky5

    return build_tiny_kandinsky5(tmp_path_factory.mktemp("kandinsky5") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_backbone("kandinsky5", str(tiny_dir))


def _pipeline_call(bb, x: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor, sigma: torch.Tensor):
    """The DiT as `Kandinsky5T2VPipeline.__call__` calls it, for latents x (B, C, f, h, w) -> (B, C, f, h, w)."""
    b, c, f, h, w = x.shape
    z = x.permute(0, 2, 3, 4, 1)
    hidden = torch.cat([z, torch.zeros_like(z), torch.zeros(b, f, h, w, 1)], dim=-1)
    out = bb.transformer(
        hidden_states=hidden,
        encoder_hidden_states=text,
        pooled_projections=pooled,
        timestep=sigma * 1000,
        visual_rope_pos=[torch.arange(f), torch.arange(h // 2), torch.arange(w // 2)],
        text_rope_pos=torch.arange(text.shape[1]),
        scale_factor=bb.pipe._get_scale_factor(h * 8, w * 8),
        sparse_params=None,
        return_dict=True,
    ).sample
    return out.permute(0, 4, 1, 2, 3)


def test_forward_is_the_pipelines_dit_call_prompt_by_prompt(tiny):
    """A batch of prompts of different lengths, one with a token dropped by token masking: each sample's
    prediction equals the pipeline's DiT call on that prompt alone (its `encode_prompt` output, no padding),
    the dropped token removed. Padding would change it: the DiT has no text mask."""
    bb = tiny
    prompts = ["a sks person dancing on the beach at night", "a dog"]
    p = bb.encode_prompt(prompts)
    lengths = p.mask.sum(dim=1).tolist()
    assert lengths[0] > lengths[1] and p.embeds.shape[1] == bb.text_length
    assert float(p.embeds[1, lengths[1] :].abs().max()) == 0  # zero rows after the prompt
    keep = torch.ones_like(p.mask)
    keep[0, 3] = False  # token masking drops one token of the first prompt
    dropped = PromptEmbeds(p.embeds * keep[..., None], p.mask & keep, p.pooled)
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(2, 4, 3, 2, 4, generator=g), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ours = bb.predict(x, sig, dropped)
        for i, prompt in enumerate(prompts):
            text, pooled, _ = bb.pipe.encode_prompt(prompt, max_sequence_length=bb.text_length)
            assert text.shape[1] == lengths[i]
            if i == 0:
                text = torch.cat([text[:, :3], text[:, 4:]], dim=1)
            ref = _pipeline_call(bb, x[i : i + 1], text, pooled, sig[i : i + 1])
            torch.testing.assert_close(ours[i : i + 1], ref, rtol=1e-4, atol=1e-5)
        padded = _pipeline_call(bb, x[1:], p.embeds[1:, : lengths[0]], p.pooled[1:], sig[1:])
        assert (padded - ours[1:]).abs().max() > 1e-3  # why `forward` cuts each prompt's padding
        # a prompt whose every token is dropped still predicts (one zero text token)
        empty = PromptEmbeds(p.embeds[1:] * 0, p.mask[1:] & False, p.pooled[1:])
        assert torch.isfinite(bb.predict(x[1:], sig[1:], empty)).all()


def test_tiny_builder_redraws_the_zero_initialised_modulation(tiny):
    """diffusers zero-initialises every modulation layer: as initialised, the DiT ignores prompt and timestep.
    The tiny builder's does not."""
    from diffusers import Kandinsky5Transformer3DModel

    bb = tiny
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 2, 4, generator=g)
    a, b = bb.encode_prompt(["a sks dog"]), bb.encode_prompt(["a red car in the city"])
    t1, t2 = torch.tensor([0.2]), torch.tensor([0.9])
    with torch.no_grad():
        assert (bb.predict(x, t1, a) - bb.predict(x, t1, b)).abs().max() > 1e-3
        assert (bb.predict(x, t1, a) - bb.predict(x, t2, a)).abs().max() > 1e-3
        real = bb.transformer
        try:
            bb.transformer = Kandinsky5Transformer3DModel.from_config(real.config).eval()
            assert torch.equal(bb.predict(x, t1, a), bb.predict(x, t2, b))  # degenerate as initialised
        finally:
            bb.transformer = real


def _as(tiny_dir, tmp_path, class_name: str):
    """The tiny checkpoint with another `_class_name` in its model_index.json."""
    out = tmp_path / class_name
    shutil.copytree(tiny_dir, out)
    index = json.loads((out / "model_index.json").read_text())
    (out / "model_index.json").write_text(json.dumps({**index, "_class_name": class_name}))
    return out


def test_image_to_video_and_look_alike_checkpoints_are_refused_in_one_line(tiny_dir, tmp_path, capsys):
    """Kandinsky5I2VPipeline (its components are the T2V ones: only the class name tells) and a folder naming
    a pipeline no family has: refused whether the family is guessed from the folder or named, by `setseq
    train` in one line that names the supported pipeline. And textual inversion, which has no tokenizer to
    train through here."""
    assert guess_backbone(str(tiny_dir)) == "kandinsky5"
    i2v, fake = (
        _as(tiny_dir, tmp_path, "Kandinsky5I2VPipeline"),
        _as(tiny_dir, tmp_path, "Kandinsky5Pipeline"),
    )
    for folder in (i2v, fake):
        with pytest.raises(SetseqError, match="Kandinsky5T2VPipeline"):
            guess_backbone(str(folder))
    with pytest.raises(
        SetseqError, match="image-to-video checkpoint.*text-to-video only.*Kandinsky5T2VPipeline"
    ):
        load_backbone("kandinsky5", str(i2v))
    with pytest.raises(SetseqError, match="'Kandinsky5Pipeline' pipeline, not .*Kandinsky5T2VPipeline"):
        load_backbone("kandinsky5", str(fake))
    video = tmp_path / "clip.mp4"
    write_video(video, moving_square_video(9, (32, 48)), fps=8)
    for folder, named, needle in [
        (i2v, [], "'Kandinsky5I2VPipeline' pipeline, which setseq does not support"),
        (i2v, ["--backbone", "kandinsky5"], "image-to-video checkpoint"),
        (fake, ["--backbone", "kandinsky5"], "not a Kandinsky 5 text-to-video one"),
    ]:
        out = tmp_path / f"run-{folder.name}-{len(named)}"
        code, _, err = run_cli(capsys, "train", "--model", folder, *named, "--video", video, "--out", out)
        assert_one_line_error(code, err, needle, "Kandinsky5T2VPipeline")
        assert not out.exists()
    # textual inversion: no tokenizer to train through (a template and two encoders), refused in one line
    code, _, err = run_cli(
        capsys, "train", "--model", tiny_dir, "--video", video, "--out", tmp_path / "ti", "--frames", "9",
        "--size", "32x48", "--method", "textual_inversion",
    )  # fmt: skip
    assert_one_line_error(code, err, "exposes no text encoder embedding table", "train_embedding=false")
    assert not (tmp_path / "ti").exists()


def test_comfyui_names_are_the_diffusers_modules_under_diffusion_model(tiny_dir, tmp_path):
    """ComfyUI's Kandinsky 5 model names its modules as diffusers does (comfy/ldm/kandinsky5/model.py), and its
    LoRA key map reads `diffusion_model.<module>` and also `transformer.<module>`: every ComfyUI key is a
    module of the diffusers DiT under `diffusion_model.`, and renamed to `transformer.` it loads into
    `Kandinsky5T2VPipeline` (whose loader converts no other layout) as the diffusers export does. ComfyUI itself
    is not run (not installed)."""
    bb = load_backbone("kandinsky5", str(tiny_dir))
    modules = {
        n: (m.in_features, m.out_features)
        for n, m in bb.transformer.named_modules()
        if isinstance(m, torch.nn.Linear) and any(re.search(p, n) for p in bb.info.lora_targets)
    }
    assert len(modules) == 20
    lora = load_setseq(fake_run(tmp_path / "run", backbone="kandinsky5", modules=modules))
    comfy = export_tensors(lora, "comfyui", part="merged")
    diff = export_tensors(lora, "diffusers", part="merged")
    weights = {k: v for k, v in comfy.items() if not k.endswith(".alpha")}
    assert {k.replace("diffusion_model.", "transformer.", 1) for k in weights} == set(diff)
    for k, v in comfy.items():
        if k.endswith(".alpha"):  # alpha = rank: ComfyUI's alpha / rank scale is 1 (alpha folded into lora_B)
            assert float(v) == comfy[k.replace(".alpha", ".lora_A.weight")].shape[0]
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(1, 4, 3, 2, 4, generator=g), torch.tensor([0.5])
    prompt = bb.encode_prompt(["a sks person"])
    preds = []
    for sd in (diff, {k.replace("diffusion_model.", "transformer.", 1): v for k, v in weights.items()}):
        bb.pipe.load_lora_weights(dict(sd))
        with torch.no_grad():
            preds.append(bb.predict(x, sig, prompt))
        bb.pipe.unload_lora_weights()
    with torch.no_grad():
        base = bb.predict(x, sig, prompt)
    assert (preds[0] - base).abs().max() > 1e-4
    torch.testing.assert_close(preds[1], preds[0], rtol=0, atol=0)


def test_nabla_checkpoints_train_and_sample_with_full_attention(tiny_dir, tmp_path):
    """A NABLA checkpoint (the 10 s and Pro configs): setseq's DiT call and its pipeline's sampling pass no
    sparse parameters (flex attention has no backward on the CPU), so a LoRA trains through it on the CPU and
    it samples at sizes NABLA's 8 x 8 patch blocks could not take."""
    from setseq import lora as L

    folder = tmp_path / "nabla"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    cfg.update(
        attention_type="nabla", attention_P=0.9, attention_wT=11, attention_wH=3, attention_wW=3,
        attention_add_sta=True, attention_method="topcdf",
    )  # fmt: skip
    (folder / "transformer" / "config.json").write_text(json.dumps(cfg))
    bb = load_backbone("kandinsky5", str(folder))
    assert bb.info.extra["attention"] == "nabla" and bb.info.spatial_multiple == 16
    assert bb.pipe.get_sparse_params(torch.zeros(1, 2, 16, 16, 9), "cpu") is None
    L.inject(bb.transformer, L.LoraSpec(4, 4.0, "down", bb.info.lora_targets), seed=0)
    L.set_stage(bb.transformer, 1)
    p = bb.encode_prompt(["a sks dog"])
    x, sig = torch.randn(1, 4, 2, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0.5])
    bb.predict(x, sig, p).square().mean().backward()
    ups = [layer.up for layer in L.get_layers(bb.transformer).values()]
    assert len(ups) == 20 and all(u.grad is not None and float(u.grad.abs().max()) > 0 for u in ups)
    with torch.no_grad():
        torch.testing.assert_close(
            bb.predict(x, sig, p), _pipeline_call(bb, x, *bb.pipe.encode_prompt("a sks dog")[:2], sig)
        )
    assert bb.generate("a sks dog", frames=5, height=32, width=48, steps=1).shape == (5, 3, 32, 48)


def test_memory_estimate_within_25_percent_in_bf16(tiny_dir):
    """The peak-memory estimate (a meta-device forward of our DiT call; in bf16 diffusers keeps the modulation
    and time embedding in fp32) against the peak measured on the CPU, with gradient checkpointing. The estimate
    counts every one of `text_length` text tokens (the meta forward cannot see the prompt's length: the
    longest prompt), so the text length is cut to about this prompt's here; at real size the 512 text
    tokens are a sliver beside the video's tens of thousands."""
    from tests.test_memory import _measured_and_estimated

    bb = load_backbone("kandinsky5", str(tiny_dir), dtype=torch.bfloat16)
    bb.text_length = 40
    with torch.no_grad():
        shape = tuple(bb.encode_video(torch.zeros(1, 17, 3, 64, 64, dtype=torch.bfloat16)).shape[1:])
    est, measured = _measured_and_estimated(bb, shape, 2, 2, True)
    assert 0.75 <= est.total / measured <= 1.25, (est, measured)
