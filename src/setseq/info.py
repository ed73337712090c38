"""`setseq info`: what a run folder (or a setseq.safetensors file) holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setseq.errors import SetseqError
from setseq.export import load_setseq
from setseq.train import checkpoint as C
from setseq.train.outputs import read_run_config


def describe_run(path: Path) -> tuple[str, dict[str, Any]]:
    if not path.exists():
        raise SetseqError(f"{path} does not exist", "pass a run folder or a setseq.safetensors file")
    data: dict[str, Any] = {"path": str(path)}
    lines = [f"run: {path}"]
    run_dir = path if path.is_dir() else path.parent
    cfg = read_run_config(run_dir) if path.is_dir() else {}
    if path.is_dir() and not cfg and not (path / "setseq.safetensors").exists():
        raise SetseqError(
            f"{path} is not a setseq run folder (no config.yaml or setseq.safetensors)",
            "pass the --out folder of `setseq train`",
        )
    if cfg:
        data["config"] = cfg
        m, d, c = cfg.get("model", {}), cfg.get("data", {}), cfg.get("concept", {})
        family = f"{m.get('backbone')}, " if m.get("backbone") != m.get("path") else ""  # not "toy toy"
        lines.append(f"model: {m.get('path')} ({family}{m.get('dtype')})")
        lines.append(
            f"video: {d.get('video')}  frames={d.get('frames')} fps={d.get('fps')} size={d.get('size')}"
        )
        lines.append(
            f"concept: token={c.get('token')} class={c.get('class_word')} motion token={c.get('motion_token')}"
        )
        s1, s2, lo = cfg.get("stage1", {}), cfg.get("stage2", {}), cfg.get("lora", {})
        lines.append(
            f"lora: rank={lo.get('rank')} basis={lo.get('basis')}; steps: stage1={s1.get('steps')} stage2={s2.get('steps')}"
        )
    if path.is_dir():
        ck = C.latest_checkpoint(path)
        if ck:
            data["latest_checkpoint"] = {"stage": ck.stage, "step": ck.step, "path": str(ck.path)}
            lines.append(f"latest checkpoint: stage {ck.stage} step {ck.step} ({ck.path.name})")
        else:
            lines.append("latest checkpoint: none")
    lora_path = path / "setseq.safetensors" if path.is_dir() else path
    if lora_path.is_file():
        lora = load_setseq(lora_path)
        data["lora"] = lora.meta
        lines.append(
            f"setseq LoRA: {lora_path.name}, {len(lora.modules)} modules, backbone {lora.meta.get('backbone')}, "
            f"rank {lora.rank}, basis {lora.basis}"
        )
        lines.append(f"  T_static: {lora.meta.get('t_static')!r}")
        lines.append(f"  T_motion: {lora.meta.get('t_motion')!r}")
        lines.append(
            f"  default scales: identity {lora.meta.get('identity_scale')}, motion {lora.meta.get('motion_scale')}"
        )
    else:
        lines.append("setseq LoRA: not written yet (training unfinished)")
    if path.is_dir():
        exports = sorted(p.name for p in path.glob("lora_*.safetensors"))
        if exports:
            lines.append(f"exports: {', '.join(exports)}")
        samples = sorted((path / "samples").glob("*.mp4")) if (path / "samples").is_dir() else []
        if samples:
            lines.append(f"samples: {len(samples)} videos in samples/")
    return "\n".join(lines), data
