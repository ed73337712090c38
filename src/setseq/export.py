"""LoRA files: setseq's own file (identity and motion kept apart) and exports other tools load.

- `setseq.safetensors`: `<module>.identity.down|up`, `<module>.motion.up|down` (fp32) + metadata
  (backbone, rank, alpha, basis, tokens, prompts, default scales, format version).
- `diffusers`: one standard LoRA, identity and motion merged at chosen scales at the same rank, keys
  `transformer.<module>.lora_A.weight` / `.lora_B.weight`, alpha folded into lora_B (so no metadata is
  needed): `WanPipeline.load_lora_weights(file)` loads it.
- `identity` / `motion`: the same layout with only one part.
- `comfyui`: `diffusion_model.<wan module>.lora_A|lora_B.weight` + `.alpha`, with module names mapped to the
  original Wan layout that ComfyUI's loader matches (diffusers names are reported as "lora key not loaded").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from setseq.errors import SetseqError
from setseq.io import atomic_path

FORMAT = "setseq"
FORMAT_VERSION = 1
EXPORT_FORMATS = ("diffusers", "comfyui", "identity", "motion")


@dataclass
class SetseqLora:
    """The contents of a setseq.safetensors file."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def modules(self) -> list[str]:
        return sorted({k.rsplit(".", 2)[0] for k in self.tensors if ".identity." in k})

    @property
    def rank(self) -> int:
        return int(self.meta["rank"])

    @property
    def alpha(self) -> float:
        return float(self.meta["alpha"])

    @property
    def basis(self) -> str:
        return str(self.meta["basis"])


def save_setseq(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the setseq file atomically. Metadata values are stored as JSON strings."""
    md = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    md.update({k: json.dumps(v) for k, v in meta.items()})
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=md)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise SetseqError(
            f"LoRA file {path} does not exist", "check the path (a run folder holds setseq.safetensors)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            md = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SetseqError(
            f"{path} is not a readable safetensors file ({type(exc).__name__})",
            "re-export or re-download it; only safetensors are read",
        ) from None
    return tensors, md


def load_setseq(path: str | Path) -> SetseqLora:
    """Read and validate a setseq file. Metadata is parsed as JSON data, never executed."""
    path = Path(path)
    if path.is_dir():
        path = path / "setseq.safetensors"
    tensors, md = _read_safetensors(path)
    if md.get("format") != FORMAT:
        raise SetseqError(
            f"{path} is not a setseq LoRA file (format: {md.get('format', 'none')!r})",
            "pass the setseq.safetensors of a setseq run; diffusers/ComfyUI LoRAs load in those tools directly",
        )
    try:
        version = int(md.get("format_version", "0"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise SetseqError(
            f"{path} has setseq format version {md.get('format_version')!r}, this setseq reads version {FORMAT_VERSION}",
            "upgrade setseq or re-export the LoRA with this version",
        )
    meta: dict[str, Any] = {}
    for k, v in md.items():
        if k in ("format", "format_version"):
            continue
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    for need in ("backbone", "rank", "alpha", "basis"):
        if need not in meta:
            raise SetseqError(
                f"{path} lacks the '{need}' metadata", "re-export it from its run with `setseq export`"
            )
    lora = SetseqLora(tensors, meta)
    for m in lora.modules:
        for part in ("identity.down", "identity.up"):
            if f"{m}.{part}" not in tensors:
                raise SetseqError(f"{path} is incomplete: no tensor {m}.{part}", "re-export it from its run")
    return lora


def check_compatible(
    lora: SetseqLora, backbone_name: str, fingerprint: str, path: str | Path = "the LoRA"
) -> list[str]:
    """Refuse a LoRA made for another backbone; returns warnings (same family, other config)."""
    if lora.meta.get("backbone") != backbone_name:
        raise SetseqError(
            f"{path} was trained for the '{lora.meta.get('backbone')}' backbone ({lora.meta.get('model_id', '?')}), "
            f"but the model loaded is '{backbone_name}'",
            f"generate with --model {lora.meta.get('model_id', '<its model>')}, or use a LoRA trained on this model",
        )
    warnings = []
    if lora.meta.get("fingerprint") not in (None, fingerprint):
        warnings.append(
            f"{path} was trained on a model with another configuration (fingerprint {lora.meta.get('fingerprint')} vs {fingerprint}); "
            "shapes are checked, results may differ"
        )
    return warnings


# --------------------------------------------------------------------------------------------------------------
# Exports


def merged_factors(
    lora: SetseqLora, module: str, identity_scale: float, motion_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A = D (r, in), lora_B = U (out, r)) of `dW = U @ D` for one module, alpha folded into U."""
    t = lora.tensors
    s = lora.alpha / lora.rank
    down, up = t[f"{module}.identity.down"].float(), t[f"{module}.identity.up"].float()
    if lora.basis == "down":
        motion = t.get(f"{module}.motion.up", torch.zeros_like(up)).float()
        return down, s * (identity_scale * up + motion_scale * motion)
    motion = t.get(f"{module}.motion.down", torch.zeros_like(down)).float()
    return identity_scale * down + motion_scale * motion, s * up


# diffusers Wan module name -> original Wan (ComfyUI) name, inside blocks.N.
_COMFY_WAN = [
    (r"\.attn1\.to_q$", ".self_attn.q"),
    (r"\.attn1\.to_k$", ".self_attn.k"),
    (r"\.attn1\.to_v$", ".self_attn.v"),
    (r"\.attn1\.to_out\.0$", ".self_attn.o"),
    (r"\.attn2\.to_q$", ".cross_attn.q"),
    (r"\.attn2\.to_k$", ".cross_attn.k"),
    (r"\.attn2\.to_v$", ".cross_attn.v"),
    (r"\.attn2\.to_out\.0$", ".cross_attn.o"),
    (r"\.attn2\.add_k_proj$", ".cross_attn.k_img"),
    (r"\.attn2\.add_v_proj$", ".cross_attn.v_img"),
    (r"\.ffn\.net\.0\.proj$", ".ffn.0"),
    (r"\.ffn\.net\.2$", ".ffn.2"),
]


def comfyui_module_name(module: str) -> str:
    for pat, rep in _COMFY_WAN:
        if re.search(pat, module):
            return re.sub(pat, rep, module)
    raise SetseqError(
        f"no ComfyUI name is known for module '{module}'", "export with --format diffusers instead"
    )


def export_tensors(
    lora: SetseqLora, fmt: str, identity_scale: float | None = None, motion_scale: float | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of an export in `fmt` (see module docstring)."""
    if fmt not in EXPORT_FORMATS:
        raise SetseqError(f"unknown export format '{fmt}'", f"use one of: {', '.join(EXPORT_FORMATS)}")
    if fmt in ("comfyui",) and lora.meta.get("backbone") not in ("wan", "toy"):
        raise SetseqError(
            f"ComfyUI export is only defined for Wan-architecture LoRAs, not '{lora.meta.get('backbone')}'",
            "use --format diffusers",
        )
    s_id = float(lora.meta.get("identity_scale", 1.0) if identity_scale is None else identity_scale)
    s_mot = float(lora.meta.get("motion_scale", 1.0) if motion_scale is None else motion_scale)
    if fmt == "identity":
        s_mot = 0.0
    elif fmt == "motion":
        s_id = 0.0
    out: dict[str, torch.Tensor] = {}
    for m in lora.modules:
        a, b = merged_factors(lora, m, s_id, s_mot)
        if fmt == "comfyui":
            key = "diffusion_model." + comfyui_module_name(m)
            out[f"{key}.lora_A.weight"] = a.contiguous()
            out[f"{key}.lora_B.weight"] = b.contiguous()
            # ComfyUI scales by alpha / rank; alpha = rank keeps the folded scale exact.
            out[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))
        else:
            out[f"transformer.{m}.lora_A.weight"] = a.contiguous()
            out[f"transformer.{m}.lora_B.weight"] = b.contiguous()
    return out


def export_file(
    lora: SetseqLora,
    fmt: str,
    out: str | Path,
    identity_scale: float | None = None,
    motion_scale: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    tensors = {
        k: v.to(dtype) if v.is_floating_point() else v
        for k, v in export_tensors(lora, fmt, identity_scale, motion_scale).items()
    }
    md = {
        "format": f"setseq-export-{fmt}",
        "setseq_backbone": str(lora.meta.get("backbone")),
        "setseq_token": str(lora.meta.get("token", "")),
        "setseq_prompt": str(lora.meta.get("t_motion", "")),
    }
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=md)
    return out
