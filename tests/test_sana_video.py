"""Sana Video facts the shared backbone table does not cover: our DiT call is the pipeline's, the prompt mask
marks the prompt's own tokens, generation is exactly the user's `SanaVideoPipeline(...)` call, the
image-to-video checkpoint and a folder of another pipeline are refused in one line naming what is supported,
and the ComfyUI export is refused (no native Sana Video model in ComfyUI)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from setseq.backbones.registry import guess_backbone, load_backbone
from setseq.backbones.sana_video import build_tiny_sana_video
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_sana_video(tmp_path_factory.mktemp("sana") / "model")


@pytest.fixture(scope="module")
def bb(tiny_dir):
    return load_backbone("sana-video", str(tiny_dir))


def pipeline_embeds(bb, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings and mask `SanaVideoPipeline` gives its DiT for `prompts` (its default instruction)."""
    embeds, mask, _, _ = bb.pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, max_sequence_length=bb.text_length,
        complex_human_instruction=bb.instruction,
    )  # fmt: skip
    return embeds, mask


def test_prompt_mask_marks_the_prompts_own_tokens(bb):
    """Of the tokens the pipeline keeps (the instruction's tail, the prompt, padding), the mask marks the
    prompt's words only; the embeddings are the pipeline's own, with the padding rows zeroed."""
    prompts = ["A sks dog running in the park", "a red car"]
    p = bb.encode_prompt(prompts)
    ref, ref_mask = pipeline_embeds(bb, prompts)
    assert p.embeds.shape == ref.shape == (2, bb.text_length, 16)
    torch.testing.assert_close(p.embeds, ref.float() * ref_mask[..., None])
    # The tiny tokenizer has one token a word and appends </s>; the pipeline keeps the first token of
    # instruction + prompt and the last 299: the instruction's first word, the prompt, </s>, padding.
    assert ref_mask.sum(1).tolist() == [1 + 7 + 1, 1 + 3 + 1]
    assert [m.nonzero().flatten().tolist() for m in p.mask] == [list(range(1, 8)), list(range(1, 4))]


def test_forward_is_the_pipelines_dit_call(bb):
    """Our DiT call (padding zeroed, mask from the non-zero rows, timestep sigma * 1000) equals the transformer
    called as `SanaVideoPipeline` calls it (the encoder's own padding rows, the tokenizer's mask); a token that
    token masking drops leaves the attention: the same as masking it in the pipeline's call."""
    prompts = ["a sks dog running", "a red car"]
    p = bb.encode_prompt(prompts)
    ref, ref_mask = pipeline_embeds(bb, prompts)
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(2, 16, 3, 4, 4, generator=g), torch.tensor([0.3, 0.8])

    def pipeline_call(mask: torch.Tensor) -> torch.Tensor:
        return bb.transformer(
            x, encoder_hidden_states=ref, encoder_attention_mask=mask, timestep=sig * 1000, return_dict=False
        )[0]

    with torch.no_grad():
        torch.testing.assert_close(bb.predict(x, sig, p), pipeline_call(ref_mask), rtol=1e-5, atol=1e-6)
        sks = int(p.mask[0].nonzero()[1])  # "sks", the prompt's second word
        keep = torch.ones_like(p.mask)
        keep[0, sks] = False
        dropped = PromptEmbeds(p.embeds * keep[..., None], p.mask & keep)
        masked = ref_mask.clone()
        masked[0, sks] = 0
        ours = bb.predict(x, sig, dropped)
        torch.testing.assert_close(ours, pipeline_call(masked), rtol=1e-5, atol=1e-6)
        assert (ours - bb.predict(x, sig, p)).abs().max() > 1e-6


def test_generate_is_the_users_pipeline_call(bb):
    """`generate` is `SanaVideoPipeline(...)` with its own defaults (instruction, 6.0 guidance, 300 tokens), at the
    exact size (no resolution bins), `frames=`, and the negative prompt given ("" when none)."""
    for negative in ("blurry", ""):
        ours = bb.generate("a sks dog", negative, steps=2, seed=3)
        ref = bb.pipe(
            prompt="a sks dog", negative_prompt=negative, height=32, width=32, frames=9, num_inference_steps=2,
            generator=torch.Generator().manual_seed(3), output_type="pt", use_resolution_binning=False,
        ).frames[0]  # fmt: skip
        assert ours.shape == (9, 3, 32, 32)
        torch.testing.assert_close(ours, (ref.float() * 2 - 1).clamp(-1, 1))
    assert not torch.equal(bb.generate("a sks dog", "blurry", steps=2, seed=3), ours)


def _relabelled(tiny_dir, folder, class_name: str) -> str:
    shutil.copytree(tiny_dir, folder)
    index = folder / "model_index.json"
    index.write_text(json.dumps(json.loads(index.read_text()) | {"_class_name": class_name}))
    return str(folder)


def test_image_to_video_checkpoint_is_refused_in_one_line(tiny_dir, tmp_path):
    """The I2V pipeline runs on the same components, but pins the first frame with a per-token timestep, which
    setseq's image condition does not express: refused by `--model` alone (naming the supported pipelines) and
    with `--backbone sana-video` (naming Sana Video's text-to-video one)."""
    folder = _relabelled(tiny_dir, tmp_path / "i2v", "SanaImageToVideoPipeline")
    with pytest.raises(
        SetseqError, match=r"'SanaImageToVideoPipeline'.*not support.*SanaVideoPipeline"
    ) as err:
        guess_backbone(folder)
    assert "\n" not in str(err.value)
    with pytest.raises(SetseqError) as err:
        load_backbone("sana-video", folder)
    msg = str(err.value)
    assert "\n" not in msg and "image-to-video" in msg and "text-to-video only (SanaVideoPipeline)" in msg


def test_a_folder_of_another_pipeline_is_refused_in_one_line(tiny_dir, tmp_path):
    """Sana Video's components under another `_class_name` (Sana's image pipeline): `--model` alone names the
    supported pipelines; `--backbone sana-video` says it is not Sana Video's."""
    folder = _relabelled(tiny_dir, tmp_path / "image", "SanaPipeline")
    with pytest.raises(SetseqError, match=r"'SanaPipeline'.*SanaVideoPipeline") as err:
        guess_backbone(folder)
    assert "\n" not in str(err.value)
    with pytest.raises(SetseqError) as err:
        load_backbone("sana-video", folder)
    msg = str(err.value)
    assert "\n" not in msg and "'SanaPipeline' pipeline, not Sana Video's SanaVideoPipeline" in msg


def test_comfyui_export_is_refused_diffusers_only(tmp_path):
    """No native Sana Video model in ComfyUI, so no key names: the ComfyUI layout is refused in one line that
    names the diffusers one."""
    from setseq.export import comfyui_families, export_file, load_setseq, save_setseq

    assert "sana-video" not in comfyui_families()
    t = {"transformer_blocks.0.attn1.to_q.identity.down": torch.randn(2, 24)}
    t["transformer_blocks.0.attn1.to_q.identity.up"] = torch.randn(24, 2)
    meta = {"backbone": "sana-video", "rank": 2, "alpha": 2.0, "basis": "down", "token": "sks"}
    save_setseq(tmp_path / "setseq.safetensors", t, meta)
    lora = load_setseq(tmp_path)
    with pytest.raises(SetseqError, match="diffusers-only.*--format diffusers") as err:
        export_file(lora, "comfyui", tmp_path / "comfy.safetensors")
    assert "\n" not in str(err.value) and not (tmp_path / "comfy.safetensors").exists()
    assert export_file(lora, "diffusers", tmp_path / "lora.safetensors").is_file()
