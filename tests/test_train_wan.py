"""End to end on a tiny random Wan built from config: train (both stages), resume, export, diffusers round trip."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from setseq import lora as L
from setseq.config_load import resolve_config
from setseq.export import load_setseq
from setseq.train import checkpoint as C
from setseq.train.recipe import Recipe
from setseq.train.run import train

OVERRIDES = [
    "lora.rank=4",
    "stage1.steps=3",
    "stage2.steps=3",
    "stage1.batch_size=2",
    "stage2.batch_size=2",
    "stage2.micro_batch=1",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=10",
    "train.tensorboard=false",
    "stage1.lr=1e-2",
    "stage2.lr=1e-2",
    "stage1.grad_clip=1.0",
    "stage2.grad_clip=1.0",
    "train.sample_every=3",
    "train.sample_steps=1",
]


def wan_cfg(model_dir, video, extra=()):
    flags = {"model": {"backbone": "wan", "path": str(model_dir)}, "data": {"video": str(video), "frames": 9}}
    return resolve_config(None, flags, OVERRIDES + list(extra))


@pytest.fixture(scope="module")
def run_dir(tiny_wan_dir, tmp_path_factory):
    from setseq.data.video import write_video
    from tests.helpers import moving_square_video

    root = tmp_path_factory.mktemp("wanrun")
    video = root / "clip.mp4"
    write_video(video, moving_square_video(13, (40, 56)), fps=8)
    out = root / "run"
    train(wan_cfg(tiny_wan_dir, video), out, progress=False, log=lambda s: None)
    return out


def test_outputs_and_metadata(run_dir):
    for name in (
        "config.yaml",
        "setseq.safetensors",
        "lora_diffusers.safetensors",
        "lora_comfyui.safetensors",
        "logs/loss.jsonl",
    ):
        assert (run_dir / name).is_file(), name
    lora = load_setseq(run_dir)
    assert lora.meta["backbone"] == "wan" and lora.rank == 4 and lora.basis == "down"
    assert lora.meta["token"] == "sks" and "zwx motion" in lora.meta["t_motion"]
    # every linear of self-attn, cross-attn and FFN in each of the 2 blocks
    assert len(lora.modules) == 2 * (4 + 4 + 2)
    assert not list((run_dir).glob(".*.safetensors")), "temp files left behind"
    assert sorted(p.name for p in (run_dir / "samples").glob("*.mp4")) == [
        "stage1-000003.mp4",
        "stage2-000003.mp4",
    ]


def test_exactly_the_intended_parameters_change(run_dir, tiny_wan_dir):
    from setseq.backbones.wan import WanBackbone

    bb = WanBackbone.load(str(tiny_wan_dir), torch.device("cpu"), torch.float32)
    L.inject(bb.transformer, L.LoraSpec(4, 4.0, "down", bb.info.lora_targets), seed=0)
    init = L.identity_state(bb.transformer)
    s1 = C.read_checkpoint(run_dir / "checkpoints" / "stage1-000003").lora()
    s2 = C.read_checkpoint(run_dir / "checkpoints" / "stage2-000003").lora()
    assert set(s1) == set(init)  # stage 1 checkpoints hold the identity only
    changed_up = sum(not torch.equal(init[k], s1[k]) for k in init if k.endswith(".up"))
    changed_down = sum(not torch.equal(init[k], s1[k]) for k in init if k.endswith(".down"))
    assert changed_up == len(init) // 2 and changed_down > 0  # stage 1 trains basis and coefficients
    for k in s1:  # stage 2: the identity stays bit-identical
        assert torch.equal(s1[k], s2[k]), k
    motion = {k: v for k, v in s2.items() if ".motion." in k}
    assert motion and all(float(v.abs().max()) > 0 for v in motion.values())
    first = C.read_checkpoint(run_dir / "checkpoints" / "stage2-000001").lora()
    assert any(not torch.equal(first[k], motion[k]) for k in motion)


def _killed_at_stage1_step2(run_dir, tmp_path):
    """A copy of the finished run without anything after stage 1 step 2 (as if killed there)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for p in (copy / "checkpoints").iterdir():
        if p.name > "stage1-000002":
            shutil.rmtree(p)
    for f in copy.glob("*.safetensors"):
        f.unlink()
    return copy


def test_resume_equals_uninterrupted(run_dir, tmp_path):
    copy = _killed_at_stage1_step2(run_dir, tmp_path)
    Recipe.from_run(copy, progress=False, log=lambda s: None).setup().train()
    a, b = load_file(str(run_dir / "setseq.safetensors")), load_file(str(copy / "setseq.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_accepts_the_cache_key_of_a_run_started_before_stable_fingerprints(run_dir, tmp_path):
    """A run started before 2026-12-02 recorded its cache key over the legacy fingerprint (the text encoder's
    folder path, transformers version and load dtype counted) with the model folder's path among the fields:
    `--resume` accepts that key (with a note) and still refuses any other."""
    import json

    from setseq.backbones.registry import load_backbone
    from setseq.errors import SetseqError
    from setseq.legacy import legacy_run_key
    from setseq.train.encode import run_fields

    copy = _killed_at_stage1_step2(run_dir, tmp_path)
    state = copy / "checkpoints" / "stage1-000002" / "state.json"
    cfg = resolve_config(copy / "config.yaml")
    bb = load_backbone("wan", cfg.model.path)
    legacy = legacy_run_key(bb.info, run_fields(cfg, bb))
    recorded = json.loads(state.read_text())
    assert legacy is not None and legacy != recorded["cache_key"]
    state.write_text(json.dumps({**recorded, "cache_key": "0123456789abcdef0123"}))
    with pytest.raises(SetseqError, match="changed since"):
        Recipe.from_run(copy, progress=False, log=lambda s: None).setup().train()
    state.write_text(json.dumps({**recorded, "cache_key": legacy}))
    lines: list[str] = []
    Recipe.from_run(copy, progress=False, log=lines.append).setup().train()
    assert any("cache key is in the form from before 2026-12-02" in line for line in lines)
    a, b = load_file(str(run_dir / "setseq.safetensors")), load_file(str(copy / "setseq.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_the_model_folder_moved(run_dir, tiny_wan_dir, tmp_path):
    """A moved model folder: `--resume` says to give its new place (`--model`), and with it resumes the run to the uninterrupted result (the fingerprint and the cache key do not see the
    folder's path)."""
    import yaml

    from setseq.errors import SetseqError
    from setseq.train.setup import resumed_config

    copy = _killed_at_stage1_step2(run_dir, tmp_path)
    moved = tmp_path / "moved-model"
    shutil.copytree(tiny_wan_dir, moved, copy_function=shutil.copy2)  # as `mv` would: times kept
    conf = copy / "config.yaml"
    data = yaml.safe_load(conf.read_text())
    data["model"]["path"] = str(tmp_path / "gone")
    conf.write_text(yaml.safe_dump(data))
    with pytest.raises(SetseqError, match="is not here") as err:
        Recipe.from_run(copy, progress=False, log=lambda s: None).setup().train()
    assert "--model" in str(err.value)
    cfg = resumed_config(copy, model=str(moved))  # what `setseq train --resume RUN --model NEW` does
    train(cfg, copy, resume=True, progress=False, log=lambda s: None)
    assert yaml.safe_load(conf.read_text())["model"]["path"] == str(moved)
    a, b = load_file(str(run_dir / "setseq.safetensors")), load_file(str(copy / "setseq.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_skips_corrupt_latest(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    latest = C.latest_checkpoint(copy)
    assert latest is not None and latest.stage == 2 and latest.step == 3
    (latest.path / "lora.safetensors").write_bytes(b"garbage")
    ck = C.latest_checkpoint(copy)
    assert ck is not None and (ck.stage, ck.step) == (2, 2)


def test_diffusers_load_lora_weights_reproduces_our_forward(run_dir, tiny_wan_dir):
    from diffusers import WanPipeline

    from setseq.infer.generate import Personalized

    ours = Personalized.load(run_dir, log=lambda s: None)
    pipe = WanPipeline.from_pretrained(str(tiny_wan_dir))
    pipe.load_lora_weights(str(run_dir / "lora_diffusers.safetensors"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    t = torch.tensor([500.0])
    text = torch.randn(1, 12, 32, generator=g)
    with torch.no_grad():
        ref = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        mine = ours.backbone.transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False
        )[0]
        pipe.unload_lora_weights()
        base = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert (mine - base).abs().max() > 1e-4  # the LoRA does something
    torch.testing.assert_close(ref, mine, rtol=1e-4, atol=1e-5)


def test_comfyui_layout(run_dir):
    t = load_file(str(run_dir / "lora_comfyui.safetensors"))
    assert "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in t
    assert "diffusion_model.blocks.1.cross_attn.o.lora_B.weight" in t
    assert "diffusion_model.blocks.0.ffn.0.lora_A.weight" in t and "diffusion_model.blocks.0.ffn.2.alpha" in t
    assert not any(k.startswith("transformer.") or ".attn1." in k for k in t)
    d = load_file(str(run_dir / "lora_diffusers.safetensors"))
    torch.testing.assert_close(
        t["diffusion_model.blocks.0.self_attn.q.lora_B.weight"],
        d["transformer.blocks.0.attn1.to_q.lora_B.weight"],
    )


def test_identity_and_motion_exports_sum_to_merged(run_dir, tmp_path):
    from setseq.export import export_tensors

    lora = load_setseq(run_dir)
    merged, ident, mot = (export_tensors(lora, f) for f in ("diffusers", "identity", "motion"))
    k = "transformer.blocks.0.attn1.to_q"
    dw = merged[f"{k}.lora_B.weight"] @ merged[f"{k}.lora_A.weight"]
    parts = (
        ident[f"{k}.lora_B.weight"] @ ident[f"{k}.lora_A.weight"]
        + mot[f"{k}.lora_B.weight"] @ mot[f"{k}.lora_A.weight"]
    )
    torch.testing.assert_close(dw, parts, rtol=1e-5, atol=1e-6)
    assert merged[f"{k}.lora_A.weight"].shape[0] == 4  # same rank as trained


def test_generate_scales(run_dir, tiny_wan_dir):
    from setseq.infer.generate import GenerateOptions, Personalized

    pm = Personalized.load(run_dir, log=lambda s: None)
    opts = dict(steps=2, seed=3)
    full = pm.generate("a sks person", GenerateOptions(**opts))
    off = pm.generate("a sks person", GenerateOptions(identity_scale=0.0, motion_scale=0.0, **opts))
    assert full.shape == (9, 3, 32, 32)
    assert not torch.allclose(full, off)
    base = Personalized.load(None, model=str(tiny_wan_dir), backbone="wan").generate(
        "a sks person", GenerateOptions(**opts)
    )
    torch.testing.assert_close(off, base)  # both scales at 0 is the base model


def test_init_lora_starts_a_new_run_from_weights(run_dir, tiny_wan_dir, tmp_path):
    video = run_dir.parent / "clip.mp4"
    out = tmp_path / "init"
    cfg = wan_cfg(tiny_wan_dir, video, ["stage1.steps=0", "stage2.steps=1", "train.sample_every=0"])
    train(cfg, out, init_lora=run_dir / "setseq.safetensors", progress=False, log=lambda s: None)
    src, new = load_file(str(run_dir / "setseq.safetensors")), load_file(str(out / "setseq.safetensors"))
    for k in src:
        if ".identity." in k:
            assert torch.equal(src[k], new[k]), k  # identity taken over, frozen in stage 2
    assert any(
        not torch.equal(src[k], new[k]) for k in src if ".motion." in k
    )  # motion trained on from there
    assert C.latest_checkpoint(out).stage == 2


def test_gradient_checkpointing_gives_the_same_gradients(tiny_wan_dir):
    from setseq.backbones.wan import WanBackbone
    from setseq.train.loop import Batch, denoising_loss

    grads = []
    for ckpt in (False, True):
        bb = WanBackbone.load(str(tiny_wan_dir), torch.device("cpu"), torch.float32)
        L.inject(bb.transformer, L.LoraSpec(4, 4.0, "down", bb.info.lora_targets), seed=0)
        params = L.set_stage(bb.transformer, 1, 0.8)
        for layer in L.get_layers(bb.transformer).values():
            layer.up.data.normal_(generator=torch.Generator().manual_seed(1))
        if ckpt:
            bb.transformer.enable_gradient_checkpointing()
        bb.transformer.train()
        gen = torch.Generator().manual_seed(0)
        L.draw_masks(bb.transformer, gen)
        x0 = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2))
        prompt = bb.encode_prompt(["a sks person", "a sks person"])
        denoising_loss(bb, Batch(x0, prompt), gen, 0.1).backward()
        grads.append([p.grad.clone() for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)  # same masks in the recomputed forward


def test_tokens_per_sample_matches_the_dit(tiny_wan_dir):
    from setseq.backbones.wan import WanBackbone
    from setseq.memory import tokens_per_sample

    bb = WanBackbone.load(str(tiny_wan_dir), torch.device("cpu"), torch.float32)
    seen = {}
    handle = bb.transformer.blocks[0].register_forward_hook(lambda m, a, o: seen.update(n=a[0].shape[1]))
    x = torch.randn(1, 16, 3, 4, 6)
    bb.predict(x, torch.tensor([0.5]), bb.encode_prompt(["a sks person"]))
    handle.remove()
    assert tokens_per_sample(bb.transformer, tuple(x.shape[1:])) == seen["n"] == 3 * 2 * 3


def test_fp8_base_weights_train_close_to_full_precision(run_dir, tiny_wan_dir, tmp_path):
    """model.fp8=true trains end to end (both stages, samples, exports) and lands near the float32 run."""
    video = run_dir.parent / "clip.mp4"
    out = tmp_path / "fp8"
    train(wan_cfg(tiny_wan_dir, video, ["model.fp8=true"]), out, progress=False, log=lambda s: None)
    a, b = load_file(str(run_dir / "setseq.safetensors")), load_file(str(out / "setseq.safetensors"))
    assert a.keys() == b.keys()
    moved = [k for k in a if ".motion." in k and a[k].abs().max() > 0]
    assert moved
    # Same data, noise and masks: the LoRA differs only through fp8's rounding of W (Adam's first steps are
    # sign-like, so single entries can flip; unrelated LoRAs would differ by ~1.4x their norm).
    diff = torch.cat([(b[k] - a[k]).flatten() for k in moved]).norm()
    rel = float(diff / torch.cat([a[k].flatten() for k in moved]).norm())
    assert rel < 0.25, rel
    assert (out / "lora_diffusers.safetensors").is_file() and (out / "samples").is_dir()


def test_block_swap_trains_the_same_lora(run_dir, tiny_wan_dir, tmp_path):
    """model.block_swap=2 (every block's linears stream from host memory; on CPU the host is the device, so
    this checks the path, not the saving: see test_offload.py) trains the same LoRA as the plain run with
    the fused path it then always takes."""
    video = run_dir.parent / "clip.mp4"
    lines: list[str] = []
    ref, out = tmp_path / "fused", tmp_path / "swap"
    train(wan_cfg(tiny_wan_dir, video, ["lora.path=fused"]), ref, progress=False, log=lambda s: None)
    train(wan_cfg(tiny_wan_dir, video, ["model.block_swap=2"]), out, progress=False, log=lines.append)
    assert any(line.startswith("block swap: ") and "of the last 2 blocks" in line for line in lines)
    a, b = load_file(str(ref / "setseq.safetensors")), load_file(str(out / "setseq.safetensors"))
    assert a.keys() == b.keys()
    assert any(a[k].abs().max() > 0 for k in a if ".motion." in k)
    # Same data, noise and masks; only float rounding differs (the untargeted linears' backward is our op
    # instead of autograd's): measured 5e-5 of the norm, where unrelated LoRAs differ by ~1.4x.
    diff = torch.cat([(b[k] - a[k]).flatten() for k in a]).norm()
    assert float(diff / torch.cat([a[k].flatten() for k in a]).norm()) < 1e-3
    assert (out / "lora_diffusers.safetensors").is_file()


def test_bf16_as_the_shipped_wan_configs_trains_with_the_memory_check(run_dir, tiny_wan_dir, tmp_path):
    """model.dtype=bfloat16 (the shipped Wan configs) with the memory check on (the default): both stages,
    samples and exports, and a LoRA near the float32 run's."""
    video = run_dir.parent / "clip.mp4"
    lines: list[str] = []
    out = tmp_path / "bf16"
    cfg = wan_cfg(tiny_wan_dir, video, ["model.dtype=bfloat16", "train.memory_check=true"])
    train(cfg, out, progress=False, log=lines.append)
    assert any("estimated peak memory" in line for line in lines)
    a, b = load_file(str(run_dir / "setseq.safetensors")), load_file(str(out / "setseq.safetensors"))
    assert a.keys() == b.keys()
    moved = [k for k in a if ".motion." in k and a[k].abs().max() > 0]
    assert moved and all(torch.isfinite(b[k]).all() for k in b)
    diff = torch.cat([(b[k] - a[k]).flatten() for k in moved]).norm()
    rel = float(diff / torch.cat([a[k].flatten() for k in moved]).norm())
    assert rel < 0.5, rel  # measured 0.21 (bf16 rounding through 6 steps); unrelated LoRAs: ~1.4
    assert (out / "lora_diffusers.safetensors").is_file() and (out / "samples").is_dir()

    # Generation loads the model in the dtype the run trained in unless told otherwise.
    from setseq.infer.generate import Personalized, pick_dtype

    quiet = lambda s: None  # noqa: E731
    assert Personalized.load(out, log=quiet).backbone.dtype == torch.bfloat16
    assert Personalized.load(run_dir, log=quiet).backbone.dtype == torch.float32
    assert Personalized.load(out, dtype="float32", log=quiet).backbone.dtype == torch.float32
    assert pick_dtype("auto", {}, "wan", torch.device("cuda")) == "bfloat16"  # older files, no dtype
    assert pick_dtype("auto", {}, "toy", torch.device("cuda")) == "float32"
    assert pick_dtype("auto", {}, "wan", torch.device("cpu")) == "float32"


@pytest.mark.parametrize("config", ["wan2.1-t2v-1.3b.yaml", "wan2.1-t2v-14b.yaml"])
def test_the_shipped_wan_configs_train_on_a_tiny_wan(config, run_dir, tiny_wan_dir, tmp_path):
    """`setseq train --config configs/...` as the README shows it (bf16, the paper's batch and accumulation,
    the memory check on), with only the model, the shape and the step counts made small."""
    from pathlib import Path

    from setseq.cli import main

    cfg = Path(__file__).resolve().parent.parent / "configs" / config
    out = tmp_path / "run"
    argv = [
        "train",
        "--config",
        str(cfg),
        "--model",
        str(tiny_wan_dir),
        "--video",
        str(run_dir.parent / "clip.mp4"),
    ]
    argv += ["--out", str(out), "--no-progress", "--frames", "9", "--size", "32x32", "lora.rank=4"]
    argv += ["stage1.steps=2", "stage2.steps=2", "train.sample_every=0", "train.tensorboard=false"]
    assert main(argv) == 0
    assert load_setseq(out / "setseq.safetensors").meta["backbone"] == "wan"
    assert (out / "lora_diffusers.safetensors").is_file() and (out / "lora_comfyui.safetensors").is_file()


def test_comfyui_parts_at_strengths_equal_the_merged_export(run_dir, tiny_wan_dir, tmp_path):
    """`export --format comfyui` writes identity and motion as two files in ComfyUI's Wan names. Read by
    diffusers' own reader of that layout as two adapters at weights (1, s), they give the forward of the
    single merged export at --motion-scale s."""
    from diffusers import WanPipeline

    from setseq.cli import main

    s = 0.5
    assert (
        main(["export", str(run_dir), "--format", "comfyui", "--out", str(tmp_path / "c.safetensors")]) == 0
    )
    merged = tmp_path / "m.safetensors"
    assert (
        main(
            ["export", str(run_dir), "--format", "diffusers", "--motion-scale", str(s), "--out", str(merged)]
        )
        == 0
    )
    ident = load_file(str(tmp_path / "c_identity.safetensors"))
    assert (
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight" in ident
        and "diffusion_model.blocks.1.ffn.2.alpha" in ident
    )
    assert not any(k.startswith("transformer.") for k in ident)

    pipe = WanPipeline.from_pretrained(str(tiny_wan_dir))
    g = torch.Generator().manual_seed(0)
    kw = dict(
        hidden_states=torch.randn(1, 16, 3, 4, 4, generator=g),
        timestep=torch.tensor([500.0]),
        encoder_hidden_states=torch.randn(1, 12, 32, generator=g),
        return_dict=False,
    )
    with torch.no_grad():
        base = pipe.transformer(**kw)[0]
        pipe.load_lora_weights(str(merged), adapter_name="merged")
        want = pipe.transformer(**kw)[0]
        pipe.delete_adapters("merged")
        pipe.load_lora_weights(str(tmp_path / "c_identity.safetensors"), adapter_name="identity")
        pipe.load_lora_weights(str(tmp_path / "c_motion.safetensors"), adapter_name="motion")
        pipe.set_adapters(["identity", "motion"], [1.0, s])
        got = pipe.transformer(**kw)[0]
        pipe.set_adapters(["identity", "motion"], [1.0, 0.0])
        identity_only = pipe.transformer(**kw)[0]
    scale = float((want - base).abs().max())
    assert scale > 1e-4 and float((want - identity_only).abs().max()) > 1e-3 * scale  # both parts matter
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)
