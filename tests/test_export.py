"""Exports on synthetic setseq files (no training): parts that add up, ComfyUI's names per family, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from setseq.errors import SetseqError
from setseq.export import export_tensors, load_setseq, save_setseq
from tests.test_cli import assert_one_line_error, run_cli

WAN_MODULES = {  # diffusers Wan module -> (in, out)
    **{f"blocks.{i}.attn1.{p}": (8, 8) for i in (0, 1) for p in ("to_q", "to_k", "to_v", "to_out.0")},
    **{f"blocks.{i}.attn2.{p}": (8, 8) for i in (0, 1) for p in ("to_q", "to_k", "to_v", "to_out.0")},
    **{f"blocks.{i}.ffn.net.0.proj": (8, 16) for i in (0, 1)},
    **{f"blocks.{i}.ffn.net.2": (16, 8) for i in (0, 1)},
}
LTX_MODULES = {
    **{f"transformer_blocks.0.{a}.{p}": (8, 8) for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v")},
    "transformer_blocks.0.attn1.to_out.0": (8, 8),
    "transformer_blocks.0.ff.net.0.proj": (8, 16),
    "transformer_blocks.0.ff.net.2": (16, 8),
}
HUNYUAN_MODULES = {
    **{f"transformer_blocks.0.attn.{p}": (8, 8) for p in ("to_q", "to_k", "to_v", "to_out.0")},
    **{
        f"transformer_blocks.0.attn.{p}": (8, 8)
        for p in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    },
    **{f"transformer_blocks.0.{f}.net.0.proj": (8, 16) for f in ("ff", "ff_context")},
    **{f"transformer_blocks.0.{f}.net.2": (16, 8) for f in ("ff", "ff_context")},
    **{f"single_transformer_blocks.0.attn.{p}": (8, 8) for p in ("to_q", "to_k", "to_v")},
    "single_transformer_blocks.0.proj_mlp": (8, 16),
    "single_transformer_blocks.0.proj_out": (24, 8),
}


def fake_run(
    path: Path,
    backbone: str = "wan",
    modules: dict[str, tuple[int, int]] = WAN_MODULES,
    basis: str = "down",
    motion: str = "trained",
    stage2_steps: int = 5,
    rank: int = 3,
) -> Path:
    """A setseq.safetensors of random factors; motion: 'trained', 'zero' or 'absent'."""
    g = torch.Generator().manual_seed(0)
    t = {}
    for m, (i, o) in modules.items():
        t[f"{m}.identity.down"] = torch.randn(rank, i, generator=g)
        t[f"{m}.identity.up"] = torch.randn(o, rank, generator=g)
        if motion != "absent":
            shape = (o, rank) if basis == "down" else (rank, i)
            v = torch.randn(*shape, generator=g) * 0.3
            t[f"{m}.motion.{'up' if basis == 'down' else 'down'}"] = v if motion == "trained" else 0 * v
    meta = {
        "backbone": backbone, "rank": rank, "alpha": 2.0 * rank, "basis": basis, "token": "sks",
        "identity_scale": 1.0, "motion_scale": 1.0, "stage1_steps": 5, "stage2_steps": stage2_steps,
    }  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    save_setseq(path / "setseq.safetensors", t, meta)
    return path


def comfy_delta(files: list[tuple[dict[str, torch.Tensor], float]], key: str) -> torch.Tensor:
    """What ComfyUI adds to the weight `key` for LoRAs loaded at strengths: strength * alpha / rank * B @ A
    (comfy/weight_adapter/lora.py: rank = lora_A's rows)."""
    out = 0
    for t, strength in files:
        a, b = t[f"{key}.lora_A.weight"], t[f"{key}.lora_B.weight"]
        out = out + strength * float(t[f"{key}.alpha"]) / a.shape[0] * (b @ a)
    return out


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("basis", ["down", "up"])
def test_comfyui_parts_at_strengths_add_up_to_merged(tmp_path, capsys, basis):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    run = fake_run(tmp_path / "run", basis=basis)
    code, out, err = run_cli(
        capsys, "export", run, "--format", "comfyui", "--out", tmp_path / "a.safetensors"
    )
    assert code == 0, err
    ident = load_file(str(tmp_path / "a_identity.safetensors"))
    mot = load_file(str(tmp_path / "a_motion.safetensors"))
    assert not (tmp_path / "a.safetensors").exists()
    assert "a_identity.safetensors" in out and "a_motion.safetensors" in out
    s = 0.6
    run_cli(
        capsys,
        "export",
        run,
        "--format",
        "diffusers",
        "--motion-scale",
        s,
        "--out",
        tmp_path / "m.safetensors",
    )
    merged = load_file(str(tmp_path / "m.safetensors"))
    for m in WAN_MODULES:
        key = "diffusion_model." + m.replace("attn1.to_", "self_attn.").replace("attn2.to_", "cross_attn.")
        key = key.replace("out.0", "o").replace("ffn.net.0.proj", "ffn.0").replace("ffn.net.2", "ffn.2")
        want = merged[f"transformer.{m}.lora_B.weight"] @ merged[f"transformer.{m}.lora_A.weight"]
        close(comfy_delta([(ident, 1.0), (mot, s)], key), want)
        shared = "lora_A" if basis == "down" else "lora_B"  # the part both share, see merged_factors
        assert torch.equal(ident[f"{key}.{shared}.weight"], mot[f"{key}.{shared}.weight"])
    assert float((comfy_delta([(mot, 1.0)], "diffusion_model.blocks.0.self_attn.q")).abs().max()) > 0
    # diffusers' own reader of the original Wan layout maps every key back to its diffusers module
    back = _convert_non_diffusers_wan_lora_to_diffusers(dict(ident))
    assert {k.removeprefix("transformer.").rsplit(".", 2)[0] for k in back} == set(WAN_MODULES)


def test_diffusers_default_is_one_merged_file_and_parts_on_request(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    code, out, err = run_cli(
        capsys, "export", run, "--format", "diffusers", "--out", tmp_path / "d.safetensors"
    )
    assert code == 0 and sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["d.safetensors"]
    code, out, err = run_cli(
        capsys, "export", run, "--format", "diffusers", "--part", "both", "--out", tmp_path / "p.safetensors"
    )
    assert code == 0, err
    merged = load_file(str(tmp_path / "d.safetensors"))
    ident = load_file(str(tmp_path / "p_identity.safetensors"))
    mot = load_file(str(tmp_path / "p_motion.safetensors"))
    k = "transformer.blocks.1.ffn.net.2"
    close(
        ident[f"{k}.lora_B.weight"] @ ident[f"{k}.lora_A.weight"]
        + mot[f"{k}.lora_B.weight"] @ mot[f"{k}.lora_A.weight"],
        merged[f"{k}.lora_B.weight"] @ merged[f"{k}.lora_A.weight"],
    )
    # the aliases are the same files as --part
    run_cli(capsys, "export", run, "--format", "motion", "--out", tmp_path / "alias.safetensors")
    alias = load_file(str(tmp_path / "alias.safetensors"))
    assert alias.keys() == mot.keys() and all(torch.equal(alias[k], mot[k]) for k in mot)


@pytest.mark.parametrize(
    ("motion", "steps", "needle"),
    [("absent", 5, "no motion tensors"), ("trained", 0, "stage2_steps is 0"), ("zero", 5, "all zero")],
)
def test_motion_part_of_a_run_without_stage2_is_refused(tmp_path, capsys, motion, steps, needle):
    run = fake_run(tmp_path / "run", motion=motion, stage2_steps=steps)
    for argv in (
        ["--format", "comfyui"],
        ["--format", "motion"],
        ["--format", "diffusers", "--part", "motion"],
    ):
        code, out, err = run_cli(capsys, "export", run, *argv, "--out", tmp_path / "x.safetensors")
        assert_one_line_error(code, err, "stage 2 never ran", needle, "--part identity")
    assert not list(tmp_path.glob("*.safetensors")), "nothing is written, not even the identity part"
    code, out, err = run_cli(
        capsys,
        "export",
        run,
        "--format",
        "comfyui",
        "--part",
        "identity",
        "--out",
        tmp_path / "i.safetensors",
    )
    assert code == 0 and (tmp_path / "i.safetensors").is_file()


def test_bad_part_flags_are_one_line_errors(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    code, out, err = run_cli(
        capsys, "export", run, "--format", "identity", "--part", "motion", "--out", tmp_path / "x.safetensors"
    )
    assert_one_line_error(code, err, "--format diffusers --part motion")
    cog = fake_run(
        tmp_path / "cog", backbone="cogvideox", modules={"transformer_blocks.0.attn1.to_q": (8, 8)}
    )
    code, out, err = run_cli(
        capsys, "export", cog, "--format", "comfyui", "--out", tmp_path / "x.safetensors"
    )
    assert_one_line_error(code, err, "diffusers-only", "--format diffusers")
    assert not list(tmp_path.glob("x*"))


def test_ltx_comfyui_keys_are_its_diffusers_names(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_ltxv_lora_to_diffusers

    lora = load_setseq(fake_run(tmp_path / "run", backbone="ltx", modules=LTX_MODULES))
    comfy = export_tensors(lora, "comfyui", part="identity")
    diff = export_tensors(lora, "diffusers", part="identity")
    assert {k for k in comfy if not k.endswith(".alpha")} == {
        k.replace("transformer.", "diffusion_model.", 1) for k in diff
    }
    # diffusers reads ComfyUI's LTX layout back to the same modules
    back = _convert_non_diffusers_ltxv_lora_to_diffusers({k: v for k, v in comfy.items() if "alpha" not in k})
    assert back.keys() == diff.keys()


def test_hunyuan_comfyui_fuses_qkv_and_linear1_exactly(tmp_path):
    lora = load_setseq(fake_run(tmp_path / "run", backbone="hunyuan", modules=HUNYUAN_MODULES))
    comfy = export_tensors(lora, "comfyui", motion_scale=0.7)
    diff = export_tensors(lora, "diffusers", motion_scale=0.7)

    def dw(m: str) -> torch.Tensor:
        return diff[f"transformer.{m}.lora_B.weight"] @ diff[f"transformer.{m}.lora_A.weight"]

    d, s = "transformer_blocks.0.", "single_transformer_blocks.0."
    fused = {  # ComfyUI module -> the diffusers modules whose rows it stacks, in order
        "double_blocks.0.img_attn.qkv": [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"],
        "double_blocks.0.txt_attn.qkv": [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"],
        "single_blocks.0.linear1": [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"],
        "double_blocks.0.img_attn.proj": [d + "attn.to_out.0"],
        "double_blocks.0.txt_attn.proj": [d + "attn.to_add_out"],
        "double_blocks.0.img_mlp.0": [d + "ff.net.0.proj"],
        "double_blocks.0.txt_mlp.2": [d + "ff_context.net.2"],
        "single_blocks.0.linear2": [s + "proj_out"],
    }
    for name, parts in fused.items():
        close(comfy_delta([(comfy, 1.0)], f"diffusion_model.{name}"), torch.cat([dw(m) for m in parts]))
    assert comfy["diffusion_model.single_blocks.0.linear1.lora_A.weight"].shape == (4 * 3, 8)
    assert len({k.rsplit(".", 2)[0] for k in comfy if k.endswith("lora_A.weight")}) == 3 + 4 + 3
    partial = {k: v for k, v in HUNYUAN_MODULES.items() if not k.endswith("attn.to_k")}
    lora = load_setseq(fake_run(tmp_path / "partial", backbone="hunyuan", modules=partial))
    with pytest.raises(SetseqError, match=r"fuses \d linears into .* covers only \d of them"):
        export_tensors(lora, "comfyui")


def test_ltx2_comfyui_keys_are_ltx2s_original_layout(tmp_path):
    """LTX-2's video stream: ComfyUI's names are the diffusers ones under `diffusion_model.`, the layout of
    Lightricks' LTX-2 LoRAs, which diffusers' LTX2Pipeline converts back to the same modules."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_ltx2_lora_to_diffusers

    lora = load_setseq(fake_run(tmp_path / "run", backbone="ltx2", modules=LTX_MODULES))
    comfy = export_tensors(lora, "comfyui", part="identity")
    diff = export_tensors(lora, "diffusers", part="identity")
    back = _convert_non_diffusers_ltx2_lora_to_diffusers({k: v for k, v in comfy.items() if "alpha" not in k})
    assert back.keys() == diff.keys()
    for k in diff:
        assert torch.equal(back[k], diff[k]), k


def test_hunyuan15_comfyui_uses_hunyuans_double_blocks_and_fills_the_last_text_query(tmp_path):
    """HunyuanVideo 1.5 runs on ComfyUI's HunyuanVideo model: the same fused double-block names. Its last block
    carries no text-query LoRA (`setseq.backbones.hunyuan15.lora_targets`), so that block's `txt_attn.qkv` gets
    zero q rows and the k, v rows of the LoRA."""
    from setseq.backbones.hunyuan15 import lora_targets

    last = {m: s for m, s in HUNYUAN_MODULES.items() if m.startswith("transformer_blocks.0.")}
    last = {m.replace(".0.", ".1.", 1): s for m, s in last.items()}
    modules = {**{m: s for m, s in HUNYUAN_MODULES.items() if m.startswith("transformer_blocks.")}, **last}
    modules = {m: s for m, s in modules.items() if any(re.search(p, m) for p in lora_targets(2))}
    assert len(modules) == 12 + 8
    lora = load_setseq(fake_run(tmp_path / "run", backbone="hunyuan15", modules=modules))
    comfy = export_tensors(lora, "comfyui", part="identity")
    diff = export_tensors(lora, "diffusers", part="identity")
    names = {k.rsplit(".", 2)[0] for k in comfy if k.endswith("lora_A.weight")}
    assert names == {
        f"diffusion_model.double_blocks.{i}.{m}"
        for i in (0, 1)
        for m in ("img_attn.qkv", "img_attn.proj", "img_mlp.0", "img_mlp.2", "txt_attn.qkv")
    } | {f"diffusion_model.double_blocks.0.{m}" for m in ("txt_attn.proj", "txt_mlp.0", "txt_mlp.2")}

    def dw(m: str) -> torch.Tensor:
        return diff[f"transformer.{m}.lora_B.weight"] @ diff[f"transformer.{m}.lora_A.weight"]

    b = "transformer_blocks.1.attn."
    want = torch.cat([torch.zeros(8, 8), dw(b + "add_k_proj"), dw(b + "add_v_proj")])
    close(comfy_delta([(comfy, 1.0)], "diffusion_model.double_blocks.1.txt_attn.qkv"), want)
