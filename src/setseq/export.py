"""LoRA files: setseq's own file (identity and motion kept apart) and exports other tools load.

- `setseq.safetensors`: `<module>.identity.down|up`, `<module>.motion.up|down` (fp32) + metadata
  (backbone, rank, alpha, basis, tokens, prompts, default scales, format version).
- `diffusers`: one standard LoRA, identity and motion merged at chosen scales at the same rank, keys
  `transformer.<module>.lora_A.weight` / `.lora_B.weight`, alpha folded into lora_B (so no metadata is
  needed): `WanPipeline.load_lora_weights(file)` loads it, and likewise `CogVideoXPipeline`, `LTXPipeline`,
  `HunyuanVideoPipeline` and `LTX2Pipeline` for LoRAs of those families (diffusers module names, no
  conversion needed); HunyuanVideo 1.5's pipeline has no `load_lora_weights` in diffusers 0.42, so
  `pipe.transformer.load_lora_adapter(file, prefix="transformer")`.
- Parts (`part`): `merged` (identity + motion at their scales, one LoRA), `identity` or `motion` alone, or
  `both` (two files, `OUT_identity` and `OUT_motion`). The parts add up to the merged LoRA: with basis `down`
  both share lora_A, with basis `up` both share lora_B. The formats `identity` / `motion` are aliases of
  `diffusers` with that part.
- `comfyui`: `diffusion_model.<ComfyUI module>.lora_A|lora_B.weight` + `.alpha` (= rank, so ComfyUI's
  alpha / rank is 1), with the module names of ComfyUI's own model (diffusers names are reported as "lora key
  not loaded"). Wan: the original Wan layout (`blocks.N.self_attn.q`, ...). LTX-Video and LTX-2 (its video
  stream): ComfyUI names the DiT as diffusers does (Lightricks' own LTX-2 LoRAs use this layout).
  HunyuanVideo: ComfyUI fuses q, k, v (and a single block's MLP input) into one linear, so those parts become
  one LoRA on the fused weight (stacked lora_A, block-diagonal lora_B; exact, at the sum of the parts' ranks).
  HunyuanVideo 1.5: ComfyUI runs it on the same HunyuanVideo model (double blocks only), so the same names.
  CogVideoX is diffusers-only.
"""

from __future__ import annotations

import json
import math
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from setseq.backbones.base import BackboneInfo
from setseq.backbones.registry import families, family
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
    path: Path | None = None  # the file it was read from

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

    @property
    def tokens(self) -> list[str]:
        """Every concept token the file was trained with: (token, motion token) of each concept, in order."""
        listed = self.meta.get("tokens")
        if isinstance(listed, list) and listed:
            return [str(t) for t in listed]
        return [str(self.meta[k]) for k in ("token", "motion_token") if self.meta.get(k)]

    @property
    def identity_tokens(self) -> list[str]:
        """Each concept's appearance token (the first of its pair)."""
        return self.tokens[0::2]


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
    _check_metadata(path, meta)
    lora = SetseqLora(tensors, meta, path)
    _check_tensors(path, lora)
    return lora


# Metadata that setseq reads, and what each must be. Everything in a file is data: checked here, never
# executed or interpreted as a pattern or a path to write to.
_STR_KEYS = (
    "backbone", "model_id", "fingerprint", "token", "class_word", "motion_token", "t_static", "t_motion",
    "setseq_version",
)  # fmt: skip
_NUM_KEYS = ("alpha", "identity_scale", "motion_scale", "guidance_scale", "fps")
_INT_KEYS = ("rank", "frames", "stage1_steps", "stage2_steps")
_MAX_TEXT = 4096
_MAX_PIXELS = 8192 * 8192  # as for input videos
_MAX_FRAMES = 4097


def _bad_meta(path: Path, key: str, why: str) -> SetseqError:
    return SetseqError(
        f"{path} has malformed '{key}' metadata ({why})", "re-export it from its run with `setseq export`"
    )


def _check_text(path: Path, key: str, v: Any) -> None:
    if not isinstance(v, str):
        raise _bad_meta(path, key, f"a {type(v).__name__}, not text")
    if len(v) > _MAX_TEXT or any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in v):
        raise _bad_meta(path, key, "control characters or over 4096 characters")


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    for k in _STR_KEYS:
        if meta.get(k) is not None:
            _check_text(path, k, meta[k])
    for k in _NUM_KEYS:
        v = meta.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise _bad_meta(path, k, f"{str(v)[:40]!r} is not a finite number")
    for k in _INT_KEYS:
        v = meta.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "rank" else 0)):
            raise _bad_meta(path, k, f"{str(v)[:40]!r} is not a whole number")
    if meta["basis"] not in ("down", "up"):
        raise _bad_meta(path, "basis", "must be 'down' or 'up'")
    if meta.get("fps") is not None and not 0 < meta["fps"] <= 1000:
        raise _bad_meta(path, "fps", "must be a frame rate in (0, 1000]")
    size = meta.get("size")
    if size is not None and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise _bad_meta(path, "size", "must be [height, width]")
    if size is not None and size[0] * size[1] > _MAX_PIXELS:
        raise _bad_meta(path, "size", f"{size[0]}x{size[1]} is larger than 8192x8192 pixels")
    if (meta.get("frames") or 0) > _MAX_FRAMES:
        raise _bad_meta(path, "frames", f"{meta['frames']} is more than {_MAX_FRAMES}")
    targets = meta.get("targets")
    if targets is not None:
        if not isinstance(targets, list):
            raise _bad_meta(path, "targets", "must be a list of module patterns")
        for t in targets:
            _check_text(path, "targets", t)


def _check_tensors(path: Path, lora: SetseqLora) -> None:
    """Every module has 2-D float identity factors of the declared rank, a motion residual (if any) of the
    shape the basis gives it, and finite values."""
    if not lora.modules:
        raise SetseqError(f"{path} holds no LoRA tensors", "re-export it from its run")
    r = lora.rank
    for m in lora.modules:
        t = lora.tensors
        for part in ("identity.down", "identity.up"):
            if f"{m}.{part}" not in t:
                raise SetseqError(f"{path} is incomplete: no tensor {m}.{part}", "re-export it from its run")
        down, up = t[f"{m}.identity.down"], t[f"{m}.identity.up"]
        shapes = {f"{m}.identity.down": (r, None), f"{m}.identity.up": (None, r)}
        mot = f"{m}.motion.{'up' if lora.basis == 'down' else 'down'}"
        if mot in t:
            shapes[mot] = tuple(up.shape) if lora.basis == "down" else tuple(down.shape)
        for key, want in shapes.items():
            v = t[key]
            ok = (
                v.ndim == 2
                and v.is_floating_point()
                and all(w is None or w == n for w, n in zip(want, v.shape))
            )
            if not ok:
                raise SetseqError(
                    f"{path}: tensor '{key}' has shape {tuple(v.shape)} ({v.dtype}), which does not fit rank {r} "
                    f"and basis {lora.basis}",
                    "the file is damaged or was edited; re-export it from its run",
                )
            if not bool(torch.isfinite(v).all()):
                raise SetseqError(
                    f"{path}: tensor '{key}' holds NaN or infinite values",
                    "use a checkpoint from before training diverged, or retrain with a lower learning rate",
                )


def check_compatible(lora: SetseqLora, info: BackboneInfo, path: str | Path = "the LoRA") -> list[str]:
    """Refuse a LoRA made for another backbone than `info`'s; returns warnings (same family, other config)."""
    backbone_name = info.name
    if lora.meta.get("backbone") != backbone_name:
        raise SetseqError(
            f"{path} was trained for the '{lora.meta.get('backbone')}' backbone ({lora.meta.get('model_id', '?')}), "
            f"but the model loaded is '{backbone_name}'",
            f"generate with --model {lora.meta.get('model_id', '<its model>')}, or use a LoRA trained on this model",
        )
    warnings = []
    if not info.accepts(lora.meta.get("fingerprint")):
        warnings.append(
            f"{path} was trained on a model with another configuration (fingerprint {lora.meta.get('fingerprint')} vs {info.fingerprint}); "
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


def _comfyui_slot(backbone: str, module: str) -> tuple[str, int]:
    """(ComfyUI module name, slot in its fused weight) of one diffusers module of `backbone`: its family's
    names (`Family.comfyui`)."""
    names = family(backbone).comfyui
    if names is None:
        raise SetseqError(
            f"setseq writes no ComfyUI layout for the '{backbone}' backbone", "export with --format diffusers"
        )
    return names(module)


def comfyui_families() -> list[str]:
    """The families whose LoRA setseq writes in ComfyUI's layout."""
    return [f.name for f in families() if f.comfyui is not None]


def comfyui_layout(
    backbone: str, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """ComfyUI keys for per-module factors {diffusers module: (lora_A (r, in), lora_B (out, r))}.

    Modules that ComfyUI fuses into one linear (HunyuanVideo's qkv and linear1) become one LoRA on the fused
    weight: lora_A stacks the parts' A (k*r, in) and lora_B is block-diagonal (sum out, k*r), so that
    B @ A stacks the parts' B_i @ A_i row-wise, exactly. Every module gets `.alpha` = its rank, so ComfyUI's
    alpha / rank scale is 1 (alpha/r of training is already folded into lora_B)."""
    groups: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for module, ab in factors.items():
        name, slot = _comfyui_slot(backbone, module)
        groups.setdefault(name, {})[slot] = ab
    out: dict[str, torch.Tensor] = {}
    for name, parts in groups.items():
        n = family(backbone).comfyui_fused.get(name.split(".", 2)[-1], 1)
        if name.endswith(".qkv") and len(parts) < n:
            # q, k and v are equally wide, so a part the LoRA leaves out is a zero LoRA of the others' shape
            # (HunyuanVideo 1.5's last block has no text-query LoRA)
            a, b = next(iter(parts.values()))
            parts = {i: parts.get(i, (torch.zeros_like(a), torch.zeros_like(b))) for i in range(n)}
        if sorted(parts) != list(range(n)):
            raise SetseqError(
                f"ComfyUI fuses {n} linears into '{name}', but the LoRA covers only {len(parts)} of them "
                "(custom lora.targets)",
                "export with --format diffusers, or train with lora.targets covering all of them",
            )
        a = torch.cat([parts[i][0] for i in range(n)], dim=0)  # (k*r, in)
        b = torch.block_diag(*[parts[i][1] for i in range(n)])  # (sum out, k*r)
        if family(backbone).comfyui_rows is not None:  # ComfyUI orders this weight's rows otherwise
            b = family(backbone).comfyui_rows(name, b)
        key = f"diffusion_model.{name}"
        out[f"{key}.lora_A.weight"] = a.contiguous()
        out[f"{key}.lora_B.weight"] = b.contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))
    return out


def lora_experts(lora: SetseqLora) -> list[str]:
    """The experts a LoRA carries layers for (a family's `Family.experts` prefixes), or [] for a one-DiT LoRA."""
    heads = {m.split(".", 1)[0] for m in lora.modules}
    for experts in (f.experts for f in families() if f.experts):
        if heads <= set(experts):
            return [e for e in experts if e in heads]
    return []


#: What an export holds: both parts merged into one LoRA, one part, or each part in its own file.
EXPORT_PARTS = ("merged", "identity", "motion", "both")


def default_part(fmt: str) -> str:
    """The part `setseq export` writes when --part is not given: ComfyUI gets two files (identity and motion,
    one LoRA loader each, each its own strength); diffusers keeps its single merged file."""
    return "both" if fmt == "comfyui" else fmt if fmt in ("identity", "motion") else "merged"


def resolve_format(fmt: str, part: str | None) -> tuple[str, str]:
    """(layout, part) of a --format / --part pair. `identity` and `motion` formats are aliases of
    `diffusers` with that part."""
    if fmt not in EXPORT_FORMATS:
        raise SetseqError(f"unknown export format '{fmt}'", f"use one of: {', '.join(EXPORT_FORMATS)}")
    if part is not None and part not in EXPORT_PARTS:
        raise SetseqError(f"unknown export part '{part}'", f"use one of: {', '.join(EXPORT_PARTS)}")
    if fmt in ("identity", "motion"):
        if part not in (None, fmt):
            raise SetseqError(
                f"--format {fmt} already means --part {fmt}, so --part {part} contradicts it",
                f"use --format diffusers --part {part}",
            )
        return "diffusers", fmt
    return fmt, part or default_part(fmt)


def _layout_and_part(fmt: str, part: str) -> tuple[str, str]:
    """As `resolve_format`, for the API's default part `merged`, which an alias format overrides."""
    return resolve_format(fmt, None if fmt in ("identity", "motion") and part == "merged" else part)


def check_motion_trained(lora: SetseqLora) -> None:
    """Refuse a motion part from a run whose stage 2 never ran: it would be an empty LoRA."""
    motion = [v for k, v in lora.tensors.items() if ".motion." in k]
    steps = lora.meta.get("stage2_steps")
    why = (
        "it holds no motion tensors"
        if not motion
        else "its stage2_steps is 0 (a one-stage method, or stage2.steps=0)"
        if steps == 0
        else "its motion tensors are all zero"
        if not any(bool(v.any()) for v in motion)
        else None
    )
    if why:
        raise SetseqError(
            f"this run has no motion part to export: stage 2 never ran ({why})",
            f"export --part identity (or merged), or train stage 2 on it: `{_stage2_command(lora)}`",
        )


def _stage2_command(lora: SetseqLora) -> str:
    """A complete command that trains Set-and-Sequence's stage 2 from a one-stage run's LoRA: the run's own
    config (its video, model, tokens), method setseq, no stage-1 steps, into a new folder beside it."""
    path = lora.path or Path("setseq.safetensors")
    run = path.parent
    q = shlex.quote
    tail = f"--init-lora {q(str(path))} --out {q(f'{run}_stage2')} method=setseq stage1.steps=0"
    if (run / "config.yaml").is_file():
        return f"setseq train --config {q(str(run / 'config.yaml'))} {tail}"
    model = lora.meta.get("model_id") or "toy"
    return f"setseq train --video VIDEO --model {q(str(model))} --token {q(str(lora.meta.get('token', 'sks')))} {tail}"


def check_export_path(out: str | Path) -> None:
    """An export is a safetensors file: refuse another suffix (`x.pt`, `x.bin`, `x.ckpt`), which tools would
    take for a pickle, before anything is written."""
    out = Path(out)
    if out.suffix != ".safetensors":
        fixed = out.with_suffix(".safetensors") if out.suffix else out.with_name(out.name + ".safetensors")
        raise SetseqError(
            f"--out {out} does not end in .safetensors, but an export is a safetensors file",
            f"name it so, e.g. --out {shlex.quote(str(fixed))}",
        )


def part_paths(out: str | Path, part: str) -> list[Path]:
    """The files an export writes: OUT itself, or for `both` OUT's stem + `_identity` / `_motion`."""
    out = Path(out)
    if part != "both":
        return [out]
    return [out.with_name(f"{out.stem}_{p}{out.suffix or '.safetensors'}") for p in ("identity", "motion")]


def export_tensors(
    lora: SetseqLora,
    fmt: str,
    identity_scale: float | None = None,
    motion_scale: float | None = None,
    expert: str | None = None,
    part: str = "merged",
) -> dict[str, torch.Tensor]:
    """The tensors of one export file in `fmt` (see module docstring). `part` is `merged` (identity +
    motion at their scales), `identity` or `motion` (that part alone, at its scale). The parts of one module
    add up to the merged LoRA: with basis `down` both share lora_A (the basis), with basis `up` both share
    lora_B. A two-expert LoRA exports one `expert` at a time, named as that expert's own DiT (diffusers:
    load the low-noise one with load_into_transformer_2)."""
    fmt, part = _layout_and_part(fmt, part)
    if part == "both":
        raise SetseqError("one export file holds one part; `both` writes two", "use export_files")
    experts = lora_experts(lora)
    if experts and expert not in experts:
        raise SetseqError(
            f"this LoRA has one part per expert ({', '.join(experts)}; Wan 2.2 A14B) and exports one at a time",
            f"pass --expert {experts[0]} or --expert {experts[-1]}",
        )
    if expert is not None and not experts:
        raise SetseqError(f"this LoRA has no experts, so --expert {expert} does not apply", "drop --expert")
    backbone = str(lora.meta.get("backbone"))
    if fmt == "comfyui" and backbone not in comfyui_families():
        raise SetseqError(
            f"the '{backbone}' family is diffusers-only: ComfyUI's loader has no key map for its LoRAs",
            "use --format diffusers (pipe.load_lora_weights)",
        )
    if part == "motion":
        check_motion_trained(lora)
    s_id = float(lora.meta.get("identity_scale", 1.0) if identity_scale is None else identity_scale)
    s_mot = float(lora.meta.get("motion_scale", 1.0) if motion_scale is None else motion_scale)
    if part == "identity":
        s_mot = 0.0
    elif part == "motion":
        s_id = 0.0
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for m in lora.modules:
        name = m
        if expert is not None:
            if not m.startswith(expert + "."):
                continue
            name = m[len(expert) + 1 :]  # the expert's own module name
        factors[name] = merged_factors(lora, m, s_id, s_mot)
    if fmt == "comfyui":
        return comfyui_layout(backbone, factors)
    out: dict[str, torch.Tensor] = {}
    for name, (a, b) in factors.items():
        out[f"transformer.{name}.lora_A.weight"] = a.contiguous()
        out[f"transformer.{name}.lora_B.weight"] = b.contiguous()
    return out


def export_file(
    lora: SetseqLora,
    fmt: str,
    out: str | Path,
    identity_scale: float | None = None,
    motion_scale: float | None = None,
    dtype: torch.dtype = torch.float32,
    expert: str | None = None,
    part: str = "merged",
) -> Path:
    """Write one export file (one part, or both merged) atomically."""
    tensors = {
        k: v.to(dtype) if v.is_floating_point() else v
        for k, v in export_tensors(lora, fmt, identity_scale, motion_scale, expert, part).items()
    }
    layout, part = _layout_and_part(fmt, part)
    md = {
        "format": f"setseq-export-{layout}" + (f"-{part}" if part != "merged" else ""),
        "setseq_part": part,
        "setseq_backbone": str(lora.meta.get("backbone")),
        "setseq_token": str(lora.meta.get("token", "")),
        "setseq_prompt": str(lora.meta.get("t_motion", "")),
    } | ({"setseq_expert": expert} if expert else {})
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=md)
    return out


def export_files(
    lora: SetseqLora,
    fmt: str,
    out: str | Path,
    part: str | None = None,
    identity_scale: float | None = None,
    motion_scale: float | None = None,
    dtype: torch.dtype = torch.float32,
    expert: str | None = None,
) -> list[Path]:
    """`setseq export`: one file, or for part `both` (ComfyUI's default) two, OUT's stem + `_identity` and
    `_motion`. Loaded as two LoRAs at strengths (1, s) they add up to the merged export at motion scale s
    (for the default scales of 1). Everything is checked before the first file is written."""
    layout, part = resolve_format(fmt, part)
    check_export_path(out)
    parts = ["identity", "motion"] if part == "both" else [part]
    if "motion" in parts:
        check_motion_trained(lora)  # before the identity file is written
    return [
        export_file(lora, layout, path, identity_scale, motion_scale, dtype, expert, p)
        for p, path in zip(parts, part_paths(out, part))
    ]
