"""The on-disk cache of what the frozen encoders make: frame latents, clip latents and prompt embeddings.

Computed once per (model, video content, size, frames, sampling, prompts) and stored as one safetensors
file named by the hash of that key, with the key itself in the file's metadata. A file whose metadata does
not match the key it is asked for is refused, never reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from setseq.errors import SetseqError
from setseq.io import atomic_path
from setseq.prompts import ImageCondition, PromptEmbeds

CACHE_VERSION = "1"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_stamp(model_id: str) -> str:
    """For a local model folder, a hash of its weight files' names, sizes and times (weights can change while
    configs stay the same); for a hub id, the id itself (the hub revision is in the cache path)."""
    folder = Path(model_id)
    if not folder.is_dir():
        return model_id
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def config_hash(obj: Any, digits: int) -> str:
    """`digits` hex digits of the SHA-256 of `obj` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:digits]


def run_key(keys: list[str]) -> str:
    """A run's cache key from its concepts' keys."""
    return keys[0] if len(keys) == 1 else cache_key({"concepts": keys})[1]


def cache_key(fields: dict[str, Any]) -> tuple[str, str]:
    """(canonical JSON of the key fields, short hash used as the file name)."""
    canon = json.dumps({"cache_version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return canon, hashlib.sha256(canon.encode()).hexdigest()[:20]


@dataclass
class EncodedConcept:
    """The cached inputs of both stages.

    set_latents:  (N, C, 1, h, w), every sampled frame as a 1-frame latent (stage 1).
    clip_latents: (1, C, f, h, w), the ordered clip (stage 2).
    static, motion: prompt embeddings of T_static and T_motion.
    """

    set_latents: torch.Tensor
    clip_latents: torch.Tensor
    static: PromptEmbeds
    motion: PromptEmbeds
    key: str
    # With a subject mask (`data.mask`, `setseq.data.masks`): the subject's share of each latent position,
    # (N, 1, 1, h, w) and (1, 1, f, h, w) ...
    subject_set: torch.Tensor | None = None
    subject_clip: torch.Tensor | None = None
    # ... and, for `stageN.background_swap`, the subject over each plain background of `swap_names`:
    # frames (K, N, C, 1, h, w) and clips (K, 1, C, f, h, w), with "T ... on a {colour} background" prompts.
    swap_names: list[str] = field(default_factory=list)
    swap_set: torch.Tensor | None = None
    swap_clip: torch.Tensor | None = None
    swap_static: list[PromptEmbeds] = field(default_factory=list)
    swap_motion: list[PromptEmbeds] = field(default_factory=list)
    # An image-to-video backbone's condition of the clip on its own first frame (stage 2), batch 1.
    clip_image: ImageCondition | None = None


def encode_latents(bb, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (F, 3, H, W) in [-1, 1] -> (every frame as a 1-frame latent (F, C, 1, h, w), the clip
    (1, C, f, h, w)), on CPU: what stage 1 and stage 2 train on."""
    with torch.no_grad():
        set_lat = torch.cat([bb.encode_video(x[i : i + 1].unsqueeze(0)) for i in range(x.shape[0])])
        clip_lat = bb.encode_video(x.unsqueeze(0))
    return set_lat.cpu(), clip_lat.cpu()


def prompt_tensors(name: str, prompt: PromptEmbeds) -> dict[str, torch.Tensor]:
    """A prompt's tensors under `name.*` for a cache file (`prompt_from` reads them back)."""
    t = {
        f"{name}.embeds": prompt.embeds.contiguous().cpu(),
        f"{name}.mask": prompt.mask.to(torch.uint8).contiguous().cpu(),
    }
    if prompt.pooled is not None:  # a second, pooled text embedding (HunyuanVideo's CLIP)
        t[f"{name}.pooled"] = prompt.pooled.contiguous().cpu()
    return t


def prompt_from(t: dict[str, torch.Tensor], name: str) -> PromptEmbeds:
    return PromptEmbeds(t[f"{name}.embeds"], t[f"{name}.mask"].bool(), t.get(f"{name}.pooled"))


def write_keyed(path: Path, tensors: dict[str, torch.Tensor], canon_key: str) -> None:
    """A cache file (temp file + rename) carrying its key, which `read_keyed` checks."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"setseq_cache_key": canon_key})


_OPTIONAL = ("subject_set", "subject_clip", "swap_set", "swap_clip")


def save_cache(path: Path, enc: EncodedConcept, canon_key: str, swap_pool: list[str] | None = None) -> None:
    """One file per key. The swap colours are stored as indices into `swap_pool` (`data.swap_backgrounds`,
    part of the key)."""
    tensors = {
        "set_latents": enc.set_latents.contiguous().cpu(),
        "clip_latents": enc.clip_latents.contiguous().cpu(),
        **prompt_tensors("static", enc.static),
        **prompt_tensors("motion", enc.motion),
    }
    for name in _OPTIONAL:
        t = getattr(enc, name)
        if t is not None:
            tensors[name] = t.contiguous().cpu()
    if enc.swap_names:
        tensors["swap_index"] = torch.tensor([list(swap_pool or []).index(c) for c in enc.swap_names])
    for k, (s, m) in enumerate(zip(enc.swap_static, enc.swap_motion)):
        tensors |= prompt_tensors(f"swap_static.{k}", s) | prompt_tensors(f"swap_motion.{k}", m)
    if enc.clip_image is not None:
        tensors["clip_image.latent"] = enc.clip_image.latent.contiguous().cpu()
        if enc.clip_image.tokens is not None:
            tensors["clip_image.tokens"] = enc.clip_image.tokens.contiguous().cpu()
    write_keyed(path, tensors, canon_key)


def read_keyed(path: Path, canon_key: str, what: str = "the cache file") -> dict[str, torch.Tensor] | None:
    """The tensors of a cache file written for exactly this key, None if absent; a corrupt file, or one
    written for another key (stale), is refused with a message naming it."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("setseq_cache_key")
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SetseqError(
            f"{what} {path} is corrupt ({type(exc).__name__})", f"delete {path} and run again"
        ) from None
    if stored != canon_key:
        raise SetseqError(
            f"{what} {path} was made for another model, video, size or prompt (stale cache)",
            f"delete {path} and run again to re-encode",
        )
    return t


def load_cache(
    path: Path, canon_key: str, short_key: str, swap_pool: list[str] | None = None
) -> EncodedConcept | None:
    """The cached encodings for this key, None if absent; a stale or corrupt file is refused."""
    t = read_keyed(path, canon_key)
    if t is None:
        return None
    swap_names = [list(swap_pool or [])[int(i)] for i in t["swap_index"]] if "swap_index" in t else []
    k = len(swap_names)
    return EncodedConcept(
        set_latents=t["set_latents"],
        clip_latents=t["clip_latents"],
        static=prompt_from(t, "static"),
        motion=prompt_from(t, "motion"),
        key=short_key,
        **{name: t.get(name) for name in _OPTIONAL},
        swap_names=swap_names,
        swap_static=[prompt_from(t, f"swap_static.{i}") for i in range(k)],
        swap_motion=[prompt_from(t, f"swap_motion.{i}") for i in range(k)],
        clip_image=ImageCondition(t["clip_image.latent"], t.get("clip_image.tokens"))
        if "clip_image.latent" in t
        else None,
    )
