"""The toy backbone: codec, text, DiT prediction, sampler, folder loading, and the shipped weights.

A tiny random-weight toy model is built from config in a temp folder (no dependence on the shipped weights),
saved and reloaded through the same code path as `scripts/train_toy.py` and `load("toy")`.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from setseq.backbones.registry import guess_backbone
from setseq.backbones.toy import (
    IDENTIFIER_TOKENS,
    REQUIRED_FILES,
    ToyBackbone,
    build_toy_components,
    load_toy,
    save_toy_model,
    toy_config,
)
from setseq.errors import SetseqError
from setseq.prompts import PromptEmbeds

WORDS = ["a", "red", "blue", "green", "circle", "square", "moving", "left", "right", "on", "background"]
TINY = toy_config(
    transformer={
        "num_layers": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "ffn_dim": 64,
        "freq_dim": 32,
    },
    text_encoder={"d_model": 32, "d_kv": 8, "num_heads": 2, "d_ff": 64, "num_layers": 1},
    pixel_mean=[0.1, -0.2, 0.05],
    pixel_std=[0.6, 0.5, 0.7],
    codec="pixel",
    prediction="x0",
)
TINY_VAE = {**TINY, "codec": "vae", "prediction": "velocity", "vae": {**TINY["vae"], "base_dim": 8}}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy") / "tiny"
    save_toy_model(folder, build_toy_components(TINY, seed=0, words=WORDS), extra={"step": 0})
    return folder


@pytest.fixture(scope="module")
def toy(tiny_folder) -> ToyBackbone:
    torch.set_num_threads(2)
    return load_toy(str(tiny_folder))


def test_is_a_backbone_with_info(toy):
    info = toy.info
    assert (info.name, info.height, info.width, info.frames) == ("toy", 32, 32, 9)
    assert (info.frame_multiple, info.spatial_multiple, info.supports_self_conditioning) == (4, 8, True)
    assert re.fullmatch(r"[0-9a-f]{12}", info.fingerprint)
    assert all(not p.requires_grad for p in toy.transformer.parameters())


def test_lora_targets_match_every_attention_and_ffn_linear(toy):
    linears = [n for n, m in toy.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    hit = [n for n in linears if any(re.search(p, n) for p in toy.info.lora_targets)]
    assert len(hit) == 10 * TINY["transformer"]["num_layers"]  # q, k, v, out x 2 attentions + 2 FFN linears
    assert "blocks.0.attn1.to_q" in hit and "blocks.1.attn2.to_out.0" in hit and "blocks.0.ffn.net.2" in hit
    assert not any("condition_embedder" in n or "proj_out" in n for n in hit)


def test_codec_is_lossless_and_keeps_frames(toy):
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (2, 9, 3, 32, 32), generator=g).float() / 127.5 - 1.0
    lat = toy.encode_video(video)
    assert lat.shape == (2, 48, 9, 8, 8)
    back = toy.decode_latents(lat)
    assert back.shape == video.shape
    assert torch.allclose(back, video, atol=1e-5)
    assert torch.equal(((back + 1) * 127.5).round(), ((video + 1) * 127.5).round())  # exact on uint8 pixels
    one = toy.encode_video(video[:, :1])
    assert one.shape == (2, 48, 1, 8, 8)
    assert torch.equal(one, lat[:, :, :1])  # no temporal mixing: a frame encodes alone as in the clip


def test_codec_normalises_with_config_statistics(toy):
    video = torch.zeros(1, 1, 3, 32, 32)
    video[:, :, 0] = 0.1  # the red channel at its mean -> zero latents on the red cells
    lat = toy.encode_video(video)
    assert torch.allclose(lat[:, :16], torch.zeros_like(lat[:, :16]), atol=1e-6)
    assert torch.allclose(lat[:, 16:32], torch.full_like(lat[:, 16:32], 0.2 / 0.5), atol=1e-6)


def test_encode_prompt_shapes_mask_and_zero_padding(toy):
    emb = toy.encode_prompt(["a red circle moving left", "", "a sks zwx circle"])
    assert isinstance(emb, PromptEmbeds)
    assert emb.embeds.shape == (3, 32, 32) and emb.mask.shape == (3, 32) and emb.mask.dtype == torch.bool
    assert emb.mask.sum(1).tolist() == [6, 1, 5]  # words + </s>; the empty prompt is just </s>
    assert torch.all(emb.embeds[~emb.mask] == 0)
    assert torch.all(emb.embeds[emb.mask].abs().sum(-1) > 0)


def test_tokenizer_knows_identifiers_and_maps_unknown_words(toy):
    vocab = toy.tokenizer.get_vocab()
    assert all(t in vocab for t in IDENTIFIER_TOKENS) and all(w in vocab for w in ("in", "motion", "person"))
    ids, _ = toy.tokenize(["A RED flibbertigibbet, sks"])
    tokens = toy.tokenizer.convert_ids_to_tokens(ids[0, :6].tolist())
    assert tokens == [
        "a",
        "red",
        "<unk>",
        "<unk>",
        "sks",
        "</s>",
    ]  # lowercased; "," split off as its own word


def test_predict_shape_and_self_conditioning_matters(toy):
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 48, 9, 8, 8, generator=g)
    sig = torch.tensor([0.3, 0.8])
    emb = toy.encode_prompt(["a red circle", "a blue square"])
    with torch.no_grad():
        out = toy.predict(noisy, sig, emb)
        out_zero = toy.predict(noisy, sig, emb, self_cond=torch.zeros_like(noisy))
        out_sc = toy.predict(noisy, sig, emb, self_cond=torch.randn(noisy.shape, generator=g))
        out_img = toy.predict(noisy[:, :, :1], sig, emb)
    assert out.shape == noisy.shape and out_img.shape == (2, 48, 1, 8, 8)
    assert torch.equal(out, out_zero)  # None means zeros
    assert not torch.allclose(out, out_sc)


def test_predict_is_velocity_of_the_dits_x0_estimate(toy):
    # x-prediction, v-loss: the DiT outputs x0, `predict` returns v = (x_sigma - x0) / sigma, so that
    # x0_from_velocity recovers the DiT's output exactly (sigma above the clamp)
    from setseq.functional.flow_matching import x0_from_velocity

    assert toy.config["prediction"] == "x0"
    g = torch.Generator().manual_seed(2)
    noisy = torch.randn(2, 48, 1, 8, 8, generator=g)
    sig = torch.tensor([0.3, 0.9])
    emb = toy.encode_prompt(["a red circle", ""])
    with torch.no_grad():
        v = toy.predict(noisy, sig, emb)
        x = torch.cat([noisy, torch.zeros_like(noisy), toy._coordinates(noisy)], 1)
        raw = toy.transformer(
            hidden_states=x, timestep=sig * 1000, encoder_hidden_states=emb.embeds, return_dict=False
        )[0]
    assert torch.allclose(x0_from_velocity(noisy, v, sig), raw, atol=1e-5)


def test_coordinate_planes_are_inputs_and_can_be_added_to_an_old_model():
    """`add_coordinate_channels` of scripts/train_toy.py (`--init-from` a model without coordinate planes)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_toy.py"
    spec = importlib.util.spec_from_file_location("train_toy", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    add_coordinate_channels = script.add_coordinate_channels

    old_cfg = {**TINY, "coord_channels": 0}
    old = build_toy_components(old_cfg, seed=0, words=WORDS)
    assert old.transformer.config.in_channels == 96
    new = add_coordinate_channels(old, 2)
    assert new.transformer.config.in_channels == 98 and new.config["coord_channels"] == 2
    a, b = ToyBackbone(old), ToyBackbone(new)
    noisy = torch.randn(1, 48, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = a.encode_prompt(["a red circle"])
    with torch.no_grad():  # zero-initialised coordinate weights: the same function until trained
        assert torch.allclose(
            a.predict(noisy, torch.tensor([0.5]), emb), b.predict(noisy, torch.tensor([0.5]), emb)
        )


def test_sample_sigmas_in_open_unit_interval(toy):
    s = toy.sample_sigmas(512, generator=torch.Generator().manual_seed(0))
    assert s.shape == (512,) and bool((s > 0).all()) and bool((s < 1).all())
    assert torch.equal(s, toy.sample_sigmas(512, generator=torch.Generator().manual_seed(0)))


def test_generate_shape_range_and_determinism(toy):
    a = toy.generate("a red circle moving left", steps=3, guidance_scale=3.0, seed=7)
    b = toy.generate("a red circle moving left", steps=3, guidance_scale=3.0, seed=7)
    c = toy.generate("a red circle moving left", steps=3, guidance_scale=3.0, seed=8)
    assert a.shape == (9, 3, 32, 32) and a.device.type == "cpu"
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    batch = toy.generate_batch(
        ["a blue square", "a red circle moving left"], seeds=[3, 7], steps=3, guidance_scale=3.0
    )
    assert torch.allclose(batch[1], a, atol=1e-5)  # a prompt gives the same video alone or in a batch
    assert toy.generate("a blue square", frames=1, steps=2, seed=0).shape == (1, 3, 32, 32)
    assert toy.generate("a blue square", frames=5, height=16, width=24, steps=2).shape == (5, 3, 16, 24)


@pytest.mark.parametrize("kwargs", [{"frames": 8}, {"height": 20}, {"steps": 0}])
def test_generate_rejects_bad_sizes(toy, kwargs):
    with pytest.raises(SetseqError):
        toy.generate("a red circle", **kwargs)


@pytest.mark.parametrize(
    "missing",
    ["transformer/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json", "toy_config.json"],
)
def test_missing_file_raises_setseq_error_naming_it(tiny_folder, tmp_path, missing):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / missing).unlink()
    with pytest.raises(SetseqError, match=re.escape(missing)) as err:
        load_toy(str(broken))
    assert "scripts/train_toy_model.sh" in str(err.value) and "\n" not in str(err.value)


def test_missing_folder_raises_setseq_error(tmp_path):
    with pytest.raises(SetseqError, match="does not exist"):
        load_toy(str(tmp_path / "nowhere"))


def test_saved_folder_is_safetensors_and_json_only(tiny_folder):
    files = [p for p in tiny_folder.rglob("*") if p.is_file()]
    assert {f for f in REQUIRED_FILES} <= {str(p.relative_to(tiny_folder)) for p in files}
    assert all(p.suffix in (".json", ".safetensors", ".jsonl", ".txt") for p in files)


def test_builder_is_seeded():
    a = build_toy_components(TINY, seed=3, words=WORDS)
    b = build_toy_components(TINY, seed=3, words=WORDS)
    for (n, p), q in zip(a.transformer.state_dict().items(), b.transformer.state_dict().values()):
        assert torch.equal(p, q), n


def test_fingerprint_changes_with_weights(tiny_folder, tmp_path):
    other = tmp_path / "other"
    save_toy_model(other, build_toy_components(TINY, seed=1, words=WORDS))
    assert load_toy(str(other)).info.fingerprint != load_toy(str(tiny_folder)).info.fingerprint


@pytest.mark.parametrize("name", ["toy", "toy-large"])
def test_shipped_toy_model_loads_and_generates(name):
    from setseq.backbones.toy import toy_folder

    folder = toy_folder(name)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        pytest.skip(
            f"shipped toy model not built yet ({folder} lacks {missing[0]}); run scripts/train_toy_model.sh"
        )
    torch.set_num_threads(2)
    model = load_toy(name)
    assert model.info.model_id == name
    assert guess_backbone(name) == "toy"
    video = model.generate("a red circle moving left on a black background", steps=4, seed=0)
    assert video.shape == (model.info.frames, 3, model.info.height, model.info.width)
    assert torch.isfinite(video).all()
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 30 * 1024 * 1024
    # each comes with its training log and its quality-gate evaluation, and passed the gate
    assert (folder / "train_log.txt").is_file() and (folder / "vae_train_log.txt").is_file()
    evaluation = json.loads((folder / "eval_toy.json").read_text())
    assert evaluation["gate"]["all_passed"] is True


def test_the_two_shipped_toy_models_differ():
    from setseq.backbones.toy import toy_folder

    assert toy_folder("toy") != toy_folder("toy-large")
    assert toy_folder("") == toy_folder("toy")
    assert load_toy("toy").info.fingerprint != load_toy("toy-large").info.fingerprint


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, name", [("train_toy_model.sh", "toy"), ("train_toy_large.sh", "toy-large")], ids=["toy", "large"]
)
def test_the_from_scratch_script_makes_a_toy_model_folder_like_the_shipped_one(tmp_path, script, name):
    """scripts/train_toy_model.sh (the default "toy" model's recipe, ~60 min) and scripts/train_toy_large.sh
    ("toy-large") at tiny budgets: every phase runs and the folder holds every file of the shipped one, loads
    and generates."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from setseq.backbones.toy import toy_folder

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "MINUTES_SCALE": "0.002", "POOL": "64", "EVAL_ARGS": "--n 4 --n-full 0 --batch 4"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", str(root / "scripts" / script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "model"
    shipped_folder = toy_folder(name)
    shipped = {p.relative_to(shipped_folder) for p in shipped_folder.rglob("*") if p.is_file()}
    made = {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
    assert shipped <= made, sorted(map(str, shipped - made))
    model = load_toy(str(folder))
    assert model.generate("a red circle moving left on a black background", steps=2, seed=0).isfinite().all()


# -- the VAE codec (the shipped model's) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy_vae") / "tiny"
    save_toy_model(folder, build_toy_components(TINY_VAE, seed=0, words=WORDS), extra={"step": 0})
    return folder


TEMPORAL_VAE = {"temperal_downsample": [False, True], "scale_factor_temporal": 2}


@pytest.mark.parametrize("temporal", [False, True], ids=["frame-wise", "temporal"])
def test_vae_codec_shapes_and_a_frame_encodes_as_in_the_clip(vae_folder, tmp_path, temporal):
    from setseq.backbones.toy import VAE_FILES

    folder = vae_folder
    if temporal:  # the 2x temporal variant (the first design) keeps working
        cfg = {**TINY_VAE, "vae": {**TINY_VAE["vae"], **TEMPORAL_VAE}}
        folder = save_toy_model(tmp_path / "t", build_toy_components(cfg, seed=0, words=WORDS))
    assert all((folder / f).is_file() for f in VAE_FILES)
    toy = load_toy(str(folder))
    assert toy.codec == "vae" and toy.latent_channels == 8 and toy.info.spatial_multiple == 8
    g = torch.Generator().manual_seed(0)
    video = torch.rand((2, 9, 3, 32, 32), generator=g) * 2 - 1
    lat = toy.encode_video(video)
    assert lat.shape == ((2, 8, 5, 8, 8) if temporal else (2, 8, 9, 8, 8))  # 4x space (2x time)
    one = toy.encode_video(video[:, :1])
    assert one.shape == (2, 8, 1, 8, 8)
    assert torch.allclose(one, lat[:, :, :1], atol=1e-5)  # causal: frame 0 alone == frame 0 in the clip
    if not temporal:  # frame-wise: every frame alone == in the clip
        assert torch.allclose(toy.encode_video(video[:, 4:5]), lat[:, :, 4:5], atol=1e-5)
    back = toy.decode_latents(lat)
    assert back.shape == video.shape and float(back.abs().max()) <= 1.0
    assert toy.generate("a red circle", steps=2, seed=0).shape == (9, 3, 32, 32)
    assert toy.generate("a red circle", frames=1, steps=2, seed=0).shape == (1, 3, 32, 32)
    if temporal:
        with pytest.raises(SetseqError, match="4k\\+1"):
            toy.encode_video(video[:, :3])


def test_vae_codec_normalises_with_the_vaes_latent_statistics(vae_folder, tmp_path):
    import shutil

    from diffusers import AutoencoderKLWan

    moved = tmp_path / "moved"
    shutil.copytree(vae_folder, moved)
    vae = AutoencoderKLWan.from_pretrained(moved / "vae")
    vae.register_to_config(latents_mean=[0.5] * 8, latents_std=[2.0] * 8)
    vae.save_pretrained(moved / "vae")
    video = torch.zeros(1, 1, 3, 32, 32)
    a, b = load_toy(str(vae_folder)).encode_video(video), load_toy(str(moved)).encode_video(video)
    assert torch.allclose(b, (a - 0.5) / 2.0, atol=1e-5)  # the base folder has mean 0, std 1


def test_vae_codec_folder_without_its_vae_names_the_file(vae_folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(vae_folder, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SetseqError, match="vae/diffusion_pytorch_model.safetensors"):
        load_toy(str(broken))


def test_a_run_from_the_old_default_toy_model_finds_toy_large(tmp_path):
    """Until 2026-11-29 "toy" named the 8-layer model now shipped as "toy-large": a LoRA file of that time says
    model_id "toy" with toy-large's fingerprint. Unasked, generate loads toy-large; asked for "toy", it names
    toy-large in its warning before refusing the modules the 4-layer model lacks."""
    from setseq.export import save_setseq
    from setseq.infer.generate import Personalized

    large = load_toy("toy-large")
    name, lin = next(
        (n, m) for n, m in large.transformer.named_modules() if isinstance(m, torch.nn.Linear) and ".7." in n
    )
    tensors = {
        f"{name}.identity.down": torch.zeros(2, lin.in_features),
        f"{name}.identity.up": torch.zeros(lin.out_features, 2),
        f"{name}.motion.up": torch.zeros(lin.out_features, 2),
    }
    meta = {"backbone": "toy", "model_id": "toy", "fingerprint": large.info.fingerprint}
    save_setseq(tmp_path / "setseq.safetensors", tensors, {**meta, "rank": 2, "alpha": 2.0, "basis": "down"})
    logs: list[str] = []
    run = Personalized.load(tmp_path, device="cpu", log=logs.append)
    assert run.backbone.info.fingerprint == large.info.fingerprint
    assert any(line.startswith("base model: toy-large") for line in logs)
    logs.clear()
    with pytest.raises(SetseqError, match="modules this model does not have"):
        Personalized.load(tmp_path, model="toy", device="cpu", log=logs.append)
    assert any("generate with --model toy-large" in line for line in logs)
