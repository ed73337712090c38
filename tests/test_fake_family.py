"""A family added from one file plus a registry entry (`tests/fake_family.py`) runs both stages, exports and
generates; a misspelt hook in a family is refused when its class is made."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from setseq.backbones import registry
from setseq.backbones.base import Backbone
from setseq.backbones.diffusers_backbone import DiffusersBackbone
from setseq.config_load import resolve_config
from setseq.export import export_file, load_setseq
from setseq.infer.generate import GenerateOptions, Personalized
from setseq.train import checkpoint as C
from setseq.train.run import train
from tests.fake_family import FAMILY
from tests.helpers import TINY_TRAINING, moving_square_video


@pytest.fixture()
def fake():
    registry.register(FAMILY)
    yield FAMILY
    registry.unregister(FAMILY.name)


def test_a_family_from_one_file_trains_exports_and_generates(fake, tmp_path):
    from setseq.data.video import write_video

    assert "fake" in registry.family_names() and registry.family("fake") is fake
    model = fake.tiny[0].build(tmp_path / "model")
    video = tmp_path / "clip.mp4"
    write_video(video, moving_square_video(13, (40, 48)), fps=8)
    flags = {"model": {"backbone": "fake", "path": str(model)}, "data": {"video": str(video), "frames": 9}}
    run = train(
        resolve_config(None, flags, TINY_TRAINING), tmp_path / "run", progress=False, log=lambda s: None
    )

    # Both stages ran on the family's own LoRA targets (q and v of self-attention, 2 blocks).
    s1 = C.read_checkpoint(run / "checkpoints" / "stage1-000002").lora()
    s2 = C.read_checkpoint(run / "checkpoints" / "stage2-000002").lora()
    lora = load_setseq(run)
    assert lora.meta["backbone"] == "fake" and sorted(lora.modules) == [
        f"blocks.{b}.attn1.to_{p}" for b in (0, 1) for p in ("q", "v")
    ]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # the identity stays bit-identical in stage 2
    assert all(float(v.abs().max()) > 0 for k, v in s2.items() if ".motion." in k)

    # Export in the family's ComfyUI names.
    out = export_file(lora, "comfyui", tmp_path / "comfy.safetensors")
    keys = load_file(str(out))
    assert keys and all(k.startswith("diffusion_model.fake.blocks.") for k in keys)

    # Generation through the family's pipeline, with the LoRA applied (it changes the video).
    pm = Personalized.load(run, log=lambda s: None)
    video_on = pm.generate("a sks person", GenerateOptions(steps=2, seed=1))
    video_off = pm.generate(
        "a sks person", GenerateOptions(steps=2, seed=1, identity_scale=0.0, motion_scale=0.0)
    )
    assert video_on.shape == (9, 3, 32, 32) and torch.isfinite(video_on).all()
    assert not torch.equal(video_on, video_off)


def test_a_misspelt_hook_is_refused_when_the_family_is_made():
    with pytest.raises(TypeError, match="trainng_target is not a hook.*did you mean 'training_target'"):

        class Typo(DiffusersBackbone):
            def trainng_target(self, x0, noise, sigmas):
                return noise

    with pytest.raises(TypeError, match="sample_sigma is not a hook.*did you mean 'sample_sigmas'"):

        class Typo2(Backbone):
            def sample_sigma(self, batch, generator=None):
                return torch.zeros(batch)

    class Own(Backbone, own=("extra",)):  # a family's own public method, listed
        def extra(self) -> int:
            return 1

    assert Own().extra() == 1
