"""One table of end-to-end checks run on every backbone family, each a tiny random model built from config.

For each family: train stage 1 and stage 2 (rank 4, batch 2, 2 + 2 steps) on a small synthetic mp4, then
- exactly the intended parameters changed (stage 1: the identity; stage 2: identity bit-identical, motion not 0),
- the personalized model generates (F, 3, H, W),
- the exported diffusers LoRA, loaded with `<Pipeline>.load_lora_weights` into a freshly loaded pipeline (or,
  where diffusers has no loader for the pipeline, the DiT's `load_lora_adapter`), reproduces our transformer's
  forward and differs from the base model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
import torch

from setseq import lora as L
from setseq.backbones.base import TinyModel
from setseq.backbones.registry import families, guess_backbone, load_backbone
from setseq.config_load import resolve_config
from setseq.errors import SetseqError
from setseq.export import load_setseq
from setseq.train import checkpoint as C
from setseq.train import recipe as recipe_module
from setseq.train.run import train
from setseq.train.setup import load_model
from tests.helpers import TINY_TRAINING


@dataclass(frozen=True)
class Row:
    backbone: str  # registry name
    tiny: TinyModel  # the family's tiny model (its file's `FAMILY.tiny`)

    @property
    def name(self) -> str:
        return self.tiny.name


# Every registered family's tiny models: a family added to the registry joins the table.
FAMILIES = [Row(f.name, t) for f in families() for t in f.tiny]


@dataclass
class Trained:
    family: Row
    model_dir: str
    run_dir: object
    backbone: object  # the model `setseq train` trained, as it left it


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def trained(request, tmp_path_factory) -> Trained:
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

    fam: Row = request.param
    root = tmp_path_factory.mktemp(fam.name)
    if fam.name == "wan":  # (the session's shared tiny Wan)
        model_dir = request.getfixturevalue("tiny_wan_dir")
    else:
        model_dir = fam.tiny.build(root / "model")
    video = root / "clip.mp4"
    write_video(
        video,
        moving_square_video(max(13, fam.tiny.frames), (fam.tiny.size[0] + 8, fam.tiny.size[1] + 16)),
        fps=8,
    )
    # No backbone named: the family comes from the folder's model_index.json, as with `--model FOLDER`.
    assert guess_backbone(str(model_dir)) == fam.backbone
    flags = {
        "model": {"backbone": fam.backbone, "path": str(model_dir)},
        "data": {"video": str(video), "frames": fam.tiny.frames, "size": list(fam.tiny.size)},
    }
    run = root / "run"
    models = []
    with pytest.MonkeyPatch.context() as mp:  # keep the trained model, to compare its frozen weights
        mp.setattr(
            recipe_module, "load_model", lambda *a, **k: models.append(load_model(*a, **k)) or models[-1]
        )
        train(resolve_config(None, flags, TINY_TRAINING), run, progress=False, log=lambda s: None)
    return Trained(fam, str(model_dir), run, models[0])


def test_exactly_the_intended_parameters_change(trained):
    bb = load_backbone(trained.family.backbone, trained.model_dir)
    L.inject(bb.transformer, L.LoraSpec(4, 4.0, "down", bb.info.lora_targets), seed=0)
    assert len(L.get_layers(bb.transformer)) == trained.family.tiny.lora_modules
    init = L.identity_state(bb.transformer)
    ck = trained.run_dir / "checkpoints"
    s1 = C.read_checkpoint(ck / "stage1-000002").lora()
    s2 = C.read_checkpoint(ck / "stage2-000002").lora()
    assert set(s1) == set(init)  # stage 1 holds the identity only
    ups = [k for k in init if k.endswith(".up")]
    assert all(not torch.equal(init[k], s1[k]) for k in ups)  # every coefficient matrix trained
    assert any(not torch.equal(init[k], s1[k]) for k in init if k.endswith(".down"))
    for k in s1:  # stage 2: the identity stays bit-identical
        assert torch.equal(s1[k], s2[k]), k
    motion = {k: v for k, v in s2.items() if ".motion." in k}
    assert len(motion) == len(ups) and all(float(v.abs().max()) > 0 for v in motion.values())
    assert set(s2) == set(s1) | set(motion)  # nothing else is trained
    lora = load_setseq(trained.run_dir)
    assert lora.meta["backbone"] == trained.family.backbone and len(lora.modules) == len(ups)


def test_generate_shape(trained):
    from setseq.infer.generate import GenerateOptions, Personalized

    pm = Personalized.load(trained.run_dir, log=lambda s: None)
    h, w = trained.family.tiny.size
    image = None
    if pm.backbone.info.image == "required":  # an image-to-video model starts from a first frame
        image = (torch.arange(h * w * 3) % 251).reshape(h, w, 3).to(torch.uint8).numpy()
    video = pm.generate("a sks person", GenerateOptions(steps=2, seed=1, image=image))
    assert video.shape == (trained.family.tiny.frames, 3, h, w)
    assert torch.isfinite(video).all()


def test_diffusers_load_lora_weights_reproduces_our_forward(trained):
    from setseq.infer.generate import Personalized

    ours = Personalized.load(trained.run_dir, log=lambda s: None).backbone
    fresh = load_backbone(trained.family.backbone, trained.model_dir)  # a freshly loaded pipeline
    assert type(fresh.pipe).__name__ == trained.family.tiny.pipeline
    path = str(trained.run_dir / "lora_diffusers.safetensors")
    if trained.family.tiny.pipeline_loads_lora:
        fresh.pipe.load_lora_weights(path)
        unload = fresh.pipe.unload_lora_weights
    else:
        assert not hasattr(fresh.pipe, "load_lora_weights")  # fails once diffusers adds one: use it then
        fresh.pipe.transformer.load_lora_adapter(path, prefix="transformer")
        unload = fresh.pipe.transformer.unload_lora
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, *_clip_latent_shape(trained), generator=g)  # the shape stage 2 trained on
    noise = torch.randn(x0.shape, generator=g)
    sig = ours.sample_sigmas(2, generator=g)
    prompt = ours.encode_prompt(["a sks person in zwx motion", "a sks person"])
    with torch.no_grad():
        x = ours.noisy(x0, noise, sig)
        mine = ours.predict(x, sig, prompt)
        ref = fresh.predict(x, sig, prompt)
        unload()
        base = fresh.predict(x, sig, prompt)
    assert mine.shape == ours.training_target(x0, noise, sig).shape
    assert (
        mine - base
    ).abs().max() > 1e-4  # the LoRA does something (and was loaded: no silent "No LoRA keys")
    torch.testing.assert_close(ref, mine, rtol=1e-4, atol=1e-5)


def _clip_latent_shape(trained) -> tuple[int, ...]:
    from safetensors import safe_open

    cache = next((trained.run_dir / "cache").glob("*.safetensors"))
    with safe_open(str(cache), framework="pt") as f:
        return tuple(f.get_slice("clip_latents").get_shape()[1:])  # (C, f, h, w)


# ------------------------------------------------------------------------------------------------------------
# Family-specific facts, cheap


def test_guess_backbone_reads_model_index(tmp_path):
    from setseq.errors import SetseqError

    for cls, fam in [("WanPipeline", "wan"), ("CogVideoXPipeline", "cogvideox"), ("LTXPipeline", "ltx"),
                     ("HunyuanVideoPipeline", "hunyuan"), ("LTX2Pipeline", "ltx2"),
                     ("HunyuanVideo15Pipeline", "hunyuan15")]:  # fmt: skip
        d = tmp_path / cls
        d.mkdir()
        (d / "model_index.json").write_text(json.dumps({"_class_name": cls}))
        assert guess_backbone(str(d)) == fam
    assert guess_backbone("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") == "wan"  # a hub id: the first real family
    d = tmp_path / "i2v"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(SetseqError, match="StableDiffusionPipeline"):
        guess_backbone(str(d))


@pytest.fixture(scope="module")
def tiny_cogvideox(tmp_path_factory):
    from setseq.backbones.cogvideox import build_tiny_cogvideox

    return load_backbone("cogvideox", str(build_tiny_cogvideox(tmp_path_factory.mktemp("cog") / "model")))


def test_cogvideox_objective_is_the_schedulers_v_prediction(tiny_cogvideox):
    bb = tiny_cogvideox
    sched = bb.pipe.scheduler
    assert (
        sched.config.prediction_type == "v_prediction" and bb.info.extra["objective"] == "ddpm-v_prediction"
    )
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 3, 4, 4, generator=g), torch.randn(3, 4, 3, 4, 4, generator=g)
    sig = bb.sample_sigmas(3, generator=g)
    t = (sig * sched.config.num_train_timesteps).round().long()
    assert torch.equal(t.float() / sched.config.num_train_timesteps, sig)  # sigmas are integer timesteps / T
    torch.testing.assert_close(bb.noisy(x0, noise, sig), sched.add_noise(x0, noise, t))
    torch.testing.assert_close(bb.training_target(x0, noise, sig), sched.get_velocity(x0, noise, t))
    # the last timestep is pure noise (zero terminal SNR): x_T = noise, v = -x0
    last = torch.full((3,), (sched.config.num_train_timesteps - 1) / sched.config.num_train_timesteps)
    torch.testing.assert_close(bb.noisy(x0, noise, last), noise, atol=1e-6, rtol=0)


def test_cogvideox_15_temporal_patch_pads_single_frames(tiny_cogvideox):
    """CogVideoX 1.5 patches 2 latent frames: 1-frame (stage 1) and odd clips are padded in front, output cut."""
    from diffusers import CogVideoXTransformer3DModel

    from setseq.backbones.cogvideox import CogVideoXBackbone

    torch.manual_seed(0)
    pipe = tiny_cogvideox.pipe
    t15 = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        patch_size_t=2, max_text_seq_length=16, use_rotary_positional_embeddings=True, patch_bias=False,
    ).eval()  # fmt: skip
    old = pipe.transformer
    try:
        pipe.transformer = t15
        bb = CogVideoXBackbone(pipe, "tiny-1.5", torch.device("cpu"), torch.float32)
        prompt = bb.encode_prompt(["a sks person"])
        sig = torch.tensor([0.5])
        with torch.no_grad():
            for f in (1, 3):
                assert bb.predict(torch.randn(1, 4, f, 4, 4), sig, prompt).shape == (1, 4, f, 4, 4)
    finally:
        pipe.transformer = old


def test_hunyuan_token_masking_removes_dropped_tokens(tmp_path):
    """The DiT reads the mask as a length: a token dropped mid-prompt must act as if it were not there."""
    from setseq.backbones.hunyuan import build_tiny_hunyuan
    from setseq.prompts import PromptEmbeds

    bb = load_backbone("hunyuan", str(build_tiny_hunyuan(tmp_path / "model")))
    p = bb.encode_prompt(["a sks person dancing"])
    n = int(p.mask.sum())
    keep = torch.ones_like(p.mask)
    keep[0, 1] = False  # drop "sks"
    dropped = PromptEmbeds(p.embeds * keep[..., None], p.mask & keep, p.pooled)
    idx = torch.tensor([0] + list(range(2, p.mask.shape[1])))
    removed = PromptEmbeds(p.embeds[:, idx], p.mask[:, idx], p.pooled)
    assert int(removed.mask.sum()) == n - 1
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(1, 4, 1, 4, 4, generator=g), torch.tensor([0.7])
    with torch.no_grad():
        torch.testing.assert_close(bb.predict(x, sig, dropped), bb.predict(x, sig, removed))
        assert (bb.predict(x, sig, dropped) - bb.predict(x, sig, p)).abs().max() > 1e-6


# The DiT's audio stream and its cross-modal attention (and the video side's modulation of it) in LTX-2.
LTX2_AUDIO = re.compile(r"audio|a2v|v2a|av_cross_attn")


@pytest.mark.parametrize(
    "trained", [f for f in FAMILIES if f.backbone == "ltx2"], ids=lambda r: r.name, indirect=True
)
def test_ltx2_trains_video_only(trained):
    """After stage 1 + 2 on LTX-2 the audio branch carries no LoRA and every weight of it (the DiT's audio stream
    and cross-modal attention, the audio VAE, the vocoder) is bit-identical to a fresh load; none of it moves
    the video prediction; the ComfyUI export (LTX-2's original key layout) loads into LTX2Pipeline."""
    from setseq.export import export_tensors
    from setseq.infer.generate import Personalized

    bb, fresh = trained.backbone, load_backbone("ltx2", trained.model_dir)
    assert not [n for n in L.get_layers(bb.transformer) if LTX2_AUDIO.search(n)]
    assert not [m for m in load_setseq(trained.run_dir).modules if LTX2_AUDIO.search(m)]

    def audio_weights(b) -> dict[str, torch.Tensor]:
        dit = {f"dit.{n}": t for n, t in b.transformer.state_dict().items() if LTX2_AUDIO.search(n)}
        parts = {
            f"{c}.{n}": t
            for c in ("audio_vae", "vocoder")
            for n, t in getattr(b.pipe, c).state_dict().items()
        }
        return dit | parts

    after, base = audio_weights(bb), audio_weights(fresh)
    assert after.keys() == base.keys() and len(base) > 100
    assert [k for k in base if not torch.equal(after[k], base[k])] == []
    params = (p for n, p in bb.transformer.named_parameters() if LTX2_AUDIO.search(n))
    assert not any(p.requires_grad or p.grad is not None for p in params)

    prompt = fresh.encode_prompt(["a sks person in zwx motion"])
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(1, *_clip_latent_shape(trained), generator=g), torch.tensor([0.6])
    with torch.no_grad():
        ref = fresh.predict(x, sig, prompt)
        for n, p in fresh.transformer.named_parameters():
            if LTX2_AUDIO.search(n):
                p.add_(torch.randn(p.shape, generator=g))
        assert torch.equal(fresh.predict(x, sig, prompt), ref)  # isolate_modalities: video only

        ours = load_backbone("ltx2", trained.model_dir)
        comfy = export_tensors(load_setseq(trained.run_dir), "comfyui", part="merged")
        assert {k.split(".", 1)[0] for k in comfy} == {"diffusion_model"}
        ours.pipe.load_lora_weights(
            {k: v for k, v in comfy.items() if not k.endswith(".alpha")}
        )  # alpha = rank
        mine = Personalized.load(trained.run_dir, log=lambda s: None).backbone.predict(x, sig, prompt)
        torch.testing.assert_close(ours.predict(x, sig, prompt), mine, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "trained", [f for f in FAMILIES if f.name == "skyreels_v2"], ids=["skyreels_v2"], indirect=True
)
def test_skyreels_v2_comfyui_export_loads_as_wan_in_its_pipeline(trained):
    """SkyReels V2's ComfyUI export is Wan's original layout (ComfyUI runs it on its Wan model): loaded through
    `SkyReelsV2Pipeline`'s own loader (which converts that layout), it predicts what our run predicts."""
    from setseq.export import export_tensors
    from setseq.infer.generate import Personalized

    comfy = export_tensors(load_setseq(trained.run_dir), "comfyui", part="merged")
    assert {k.split(".", 1)[0] for k in comfy} == {"diffusion_model"}
    assert any(".self_attn.q." in k for k in comfy) and not any(".attn1." in k for k in comfy)
    ours = load_backbone("skyreels-v2", trained.model_dir)
    assert type(ours.pipe).__name__ == "SkyReelsV2Pipeline"
    ours.pipe.load_lora_weights({k: v for k, v in comfy.items() if not k.endswith(".alpha")})  # alpha = rank
    prompt = ours.encode_prompt(["a sks person in zwx motion"])
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(1, *_clip_latent_shape(trained), generator=g), torch.tensor([0.6])
    with torch.no_grad():
        mine = Personalized.load(trained.run_dir, log=lambda s: None).backbone.predict(x, sig, prompt)
        torch.testing.assert_close(ours.predict(x, sig, prompt), mine, rtol=1e-4, atol=1e-5)


def test_skyreels_v2_diffusion_forcing_is_refused_in_one_line(tmp_path):
    """A diffusion-forcing folder is refused by its pipeline class, naming what is supported; a DiT with the
    fps embedding those checkpoints use is refused when it loads."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline, SkyReelsV2Pipeline

    from setseq.backbones.skyreels_v2 import build_tiny_skyreels_v2

    folder = build_tiny_skyreels_v2(tmp_path / "t2v")
    df = tmp_path / "df"
    pipe = SkyReelsV2Pipeline.from_pretrained(folder)
    SkyReelsV2DiffusionForcingPipeline(**pipe.components).save_pretrained(df, safe_serialization=True)
    with pytest.raises(SetseqError, match="SkyReelsV2DiffusionForcingPipeline.*SkyReelsV2Pipeline"):
        guess_backbone(str(df))
    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps(cfg | {"inject_sample_info": True}))
    with pytest.raises(SetseqError, match="diffusion-forcing") as err:
        load_backbone("skyreels-v2", str(folder))
    assert "\n" not in str(err.value)


# MiniMax H3's only audio-only DiT weights: its audio input projection and output head.
H3_AUDIO = re.compile(r"audio")


def _h3_joint_call(bb, prompt, x, t: float, n_audio: int):
    """MiniMax H3's DiT called as the pipeline calls it at generation, `n_audio` audio latents (x 2 stereo
    rows) beside the video rows: (video rows, audio rows)."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import (
        MiniMaxH3PrepareLayoutStep,
        MiniMaxH3SetTimestepsStep,
        patchify_video_latents,
    )

    text = prompt.embeds[:, prompt.mask[0]]
    _, c, f, h, w = x.shape
    patch = tuple(bb.transformer.config.patch_size)
    pos, tags, vid, aud, txt, _, _ = MiniMaxH3PrepareLayoutStep.build_packed_sequence(
        torch.ones(text.shape[1]), f, h, w, n_audio, patch, 2, 2, 0
    )
    ts, idx = MiniMaxH3SetTimestepsStep.build_row_timesteps(vid, aud, 0, 0, text.shape[1], t, t, 1.0, 1.0)
    audio = torch.randn(
        1, 2 * n_audio, bb.transformer.config.audio_in_channels, generator=torch.Generator().manual_seed(3)
    )
    return bb.transformer(
        hidden_states=patchify_video_latents(x, patch)[None], audio_hidden_states=audio, encoder_hidden_states=text,
        timestep=ts, timestep_indices=idx, token_tags=tags, position_ids=pos.float(), video_indices=vid,
        audio_indices=aud, text_indices=txt, return_dict=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "trained", [f for f in FAMILIES if f.backbone == "minimax-h3"], ids=["minimax-h3"], indirect=True
)
def test_minimax_h3_trains_video_only(trained):
    """After stage 1 + 2 on MiniMax H3: no LoRA on an audio-only module; the audio-only weights (the DiT's audio
    projection and head, the audio VAE) bit-identical to a fresh load, with no gradient; they do not move the
    video prediction (training has no audio rows). What the LoRA on the shared blocks does change: the audio
    rows' output when audio rows are present, as at generation (so the generated soundtrack changes), while the
    base model's audio output is untouched (LoRA switched off: bit-identical to a fresh model's). The ComfyUI
    export (original names: fused qkv_proj, fc1 halves swapped) goes through diffusers' own converter of that
    layout to exactly our modules' deltas, and loads into the modular pipeline with our prediction."""
    from diffusers import MiniMaxH3ModularPipeline

    from setseq.export import export_tensors
    from setseq.infer.generate import Personalized

    bb, fresh = trained.backbone, load_backbone("minimax-h3", trained.model_dir)
    assert not [n for n in L.get_layers(bb.transformer) if H3_AUDIO.search(n)]
    assert not [m for m in load_setseq(trained.run_dir).modules if H3_AUDIO.search(m)]

    def audio_weights(b) -> dict[str, torch.Tensor]:
        dit = {f"dit.{n}": t for n, t in b.transformer.state_dict().items() if H3_AUDIO.search(n)}
        return dit | {f"audio_vae.{n}": t for n, t in b.pipe.audio_vae.state_dict().items()}

    after, base = audio_weights(bb), audio_weights(fresh)
    assert after.keys() == base.keys() and len(base) > 20
    assert [k for k in base if not torch.equal(after[k], base[k])] == []
    params = (p for n, p in bb.transformer.named_parameters() if H3_AUDIO.search(n))
    assert not any(p.requires_grad or p.grad is not None for p in params)

    prompt = fresh.encode_prompt(["a sks person in zwx motion"])
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(1, *_clip_latent_shape(trained), generator=g), torch.tensor([0.6])
    ours = Personalized.load(trained.run_dir, log=lambda s: None).backbone
    with torch.no_grad():
        ref = fresh.predict(x, sig, prompt)
        video, audio = _h3_joint_call(ours, prompt, x, 0.4, n_audio=5)
        with L.switched_off(ours.transformer):
            video0, audio0 = _h3_joint_call(ours, prompt, x, 0.4, n_audio=5)
        assert (audio - audio0).abs().max() > 1e-4 * audio0.abs().max()  # the shared blocks' LoRA moves audio
        assert (video - video0).abs().max() > 1e-4 * video0.abs().max()
        # the base model's audio output is untouched
        assert torch.equal(audio0, _h3_joint_call(fresh, prompt, x, 0.4, n_audio=5)[1])
        for n, p in fresh.transformer.named_parameters():
            if H3_AUDIO.search(n):
                p.add_(torch.randn(p.shape, generator=g))
        # no audio rows in training: the audio weights are not read
        assert torch.equal(fresh.predict(x, sig, prompt), ref)

        lora = load_setseq(trained.run_dir)
        comfy = export_tensors(lora, "comfyui", part="merged")
        assert {k.split(".", 1)[0] for k in comfy} == {"diffusion_model"}
        assert any(".attn.qkv_proj." in k for k in comfy) and any(".mlp.fc1." in k for k in comfy)
        plain = export_tensors(lora, "diffusers", part="merged")
        # diffusers' own converter of the original layout
        converted = MiniMaxH3ModularPipeline.lora_state_dict(dict(comfy))
        mods = {k[: -len(".lora_A.weight")] for k in plain if k.endswith(".lora_A.weight")}
        assert {k[: -len(".lora_A.weight")] for k in converted if k.endswith(".lora_A.weight")} == mods
        for m in mods:
            want = plain[f"{m}.lora_B.weight"] @ plain[f"{m}.lora_A.weight"]
            got = converted[f"{m}.lora_B.weight"] @ converted[f"{m}.lora_A.weight"]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
        h3 = load_backbone("minimax-h3", trained.model_dir)
        h3.pipe.load_lora_weights(comfy)
        mine = ours.predict(x, sig, prompt)
        torch.testing.assert_close(h3.predict(x, sig, prompt), mine, rtol=1e-4, atol=1e-5)


def test_hunyuan15_forward_is_the_pipelines_dit_call(tmp_path):
    """Our text-to-video DiT call (padding cut, glyph and Qwen tokens side by side, no image tokens) equals
    diffusers' own forward called as `HunyuanVideo15Pipeline` calls it (full padding, 729 zero image tokens),
    for a prompt with quoted text (ByT5 tokens), one without, and a token dropped by token masking."""
    from diffusers import HunyuanVideo15Transformer3DModel

    from setseq.backbones.hunyuan15 import build_tiny_hunyuan15
    from setseq.prompts import PromptEmbeds

    bb = load_backbone("hunyuan15", str(build_tiny_hunyuan15(tmp_path / "model")))
    p = bb.encode_prompt(['a sks dog holding a sign that says "hello"', "a sks dog"])
    n, cfg = bb.text_length, bb.transformer.config
    assert p.embeds.shape[1] == n + bb.glyph_length and p.pooled is None
    assert int(p.mask[0, n:].sum()) > 0 and int(p.mask[1, n:].sum()) == 0  # ByT5 reads quoted text only
    keep = torch.ones_like(p.mask)
    keep[0, 1] = False  # token masking drops "sks" from the first prompt
    p = PromptEmbeds(p.embeds * keep[..., None], p.mask & keep)
    g = torch.Generator().manual_seed(0)
    x, sig = torch.randn(2, 4, 3, 2, 3, generator=g), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ours = bb.predict(x, sig, p)
        ref = HunyuanVideo15Transformer3DModel.forward(
            bb.transformer,
            hidden_states=torch.cat([x, torch.zeros_like(x), torch.zeros(2, 1, 3, 2, 3)], dim=1),
            timestep=sig * 1000,
            encoder_hidden_states=p.embeds[:, :n, : cfg.text_embed_dim],
            encoder_attention_mask=p.mask[:, :n].float(),
            encoder_hidden_states_2=p.embeds[:, n:, : cfg.text_embed_2_dim],
            encoder_attention_mask_2=p.mask[:, n:].float(),
            image_embeds=torch.zeros(2, 729, cfg.image_embed_dim),
            return_dict=False,
        )[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_fingerprint_is_the_models_not_where_or_how_it_was_loaded(tiny_wan_dir, tmp_path):
    """A moved model folder, another load dtype or a library upgrade keep the fingerprint (they changed it
    before 2026-12-02, when the text encoder's `_name_or_path`, `transformers_version` and `dtype` counted); a
    LoRA recorded with the legacy fingerprint is still this model's; another architecture is not. The toy model
    too (its legacy fingerprint differed in every install)."""
    import hashlib
    import shutil

    from setseq.backbones.toy.files import load_toy_components, toy_fingerprint
    from setseq.backbones.wan import build_tiny_wan
    from setseq.export import SetseqLora, check_compatible

    moved = tmp_path / "moved"
    shutil.copytree(tiny_wan_dir, moved)
    a = load_backbone("wan", str(tiny_wan_dir))
    b = load_backbone("wan", str(moved), dtype=torch.bfloat16)
    assert a.info.fingerprint == b.info.fingerprint
    assert a.info.legacy_fingerprint != b.info.legacy_fingerprint  # the old form saw the path and dtype
    old = hashlib.sha256(
        json.dumps(a.fingerprint_configs(), sort_keys=True, default=str).encode()
    ).hexdigest()
    assert a.info.legacy_fingerprint == old[:16]  # the formula setseq used before

    lora = SetseqLora(tensors={}, meta={"backbone": "wan", "fingerprint": a.info.legacy_fingerprint})
    assert check_compatible(lora, a.info) == []
    lora.meta["fingerprint"] = b.info.legacy_fingerprint  # recorded by the old form, elsewhere
    assert check_compatible(lora, a.info)  # not recognisable: warned, as before
    other = load_backbone("wan", str(build_tiny_wan(tmp_path / "wider", heads=4)))
    assert other.info.fingerprint != a.info.fingerprint

    toy = load_toy_components("toy")
    toy.text_encoder.config._name_or_path = "/elsewhere/toy/text_encoder"
    toy.text_encoder.config.transformers_version = "9.99.0"
    assert toy_fingerprint(toy) == toy_fingerprint(load_toy_components("toy"))
    assert toy_fingerprint(toy, legacy=True) != toy_fingerprint(load_toy_components("toy"), legacy=True)


@pytest.mark.parametrize("row", [r for r in FAMILIES if r.name != "wan"], ids=lambda r: r.name)
def test_every_family_loads_with_its_dit_on_the_meta_device(row, tmp_path):
    """`dit_on_meta` (the processes other than 0 under model.fsdp): every family's backbone is built around a
    DiT whose parameters are on the meta device (its weights unread), with the fingerprint of the real one."""
    from setseq.backbones.base import dit_on_meta

    folder = row.tiny.build(tmp_path / "m")
    real = load_backbone(row.backbone, str(folder))
    with dit_on_meta():
        empty = load_backbone(row.backbone, str(folder))
    assert {p.device.type for p in empty.transformer.parameters()} == {"meta"}
    assert {p.device.type for p in real.transformer.parameters()} == {"cpu"}
    assert empty.info.fingerprint == real.info.fingerprint


def test_cross_attention_is_declared_where_the_dit_has_it(trained):
    # The attention loss's layers (`Backbone.cross_attention`): Wan's and SkyReels V2's `attn2`, read in a
    # forward as one query and one key each, whose map over every text token sums to 1 on each video token.
    from setseq.functional.regularizers import concept_attention
    from setseq.train.attention import AttentionLoss

    bb, tiny = trained.backbone, trained.family.tiny
    site = bb.cross_attention()
    assert (site is not None) == (trained.family.backbone in ("wan", "skyreels-v2"))
    if site is None:
        return
    assert site.layers and all(hasattr(m, "norm_q") and hasattr(m, "norm_k") for m in site.layers)
    assert bb.token_positions("a sks person", "sks")
    with torch.no_grad():
        lat = bb.encode_video(torch.rand(1, tiny.frames, 3, *tiny.size) * 2 - 1)
        with AttentionLoss(bb, site, "sks").capture() as kept:
            bb.predict(lat, torch.tensor([0.5]), bb.encode_prompt(["a sks person"]))
    pt, ph, pw = site.patch
    tokens = lat.shape[2] // pt * (lat.shape[3] // ph) * (lat.shape[4] // pw)
    assert len(kept) == len(site.layers)
    for q, k in kept.values():
        every = concept_attention(q, k, int(site.layers[0].heads), [list(range(k.shape[1]))])
        assert every.shape == (1, tokens)
        torch.testing.assert_close(every, torch.ones_like(every))
