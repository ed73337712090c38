"""The base model's ceiling on a concept's edit suite (issue #29): what the base model, with no LoRA, draws when
each edit is asked in words alone.

For every edit of the concept's suite (`setseq.eval.edits.edit_suite`) the base model is prompted with the full
caption of what the edited video should show ("a pink cross zigzagging right on a green background"), and the
video is scored exactly as the bench scores an edit. `kept` counts the shape only where the base model draws the
concept's shape from the concept's own caption (as a run's edits count it only where its reproduction draws
it). An edit the base model cannot draw from a complete description is limited by the model, not by the method.

The ceiling depends on the model's weights, the concept, the sampling seed, the sampling steps and the edit
suite, never on the method: it is computed once per such key and cached in a JSON file (`CeilingCache`) that
`setseq bench` and `setseq demo` share. The shipped toy model's ceilings on the shipped concepts come with the
package (`SHIPPED`, made by `benchmarks/base_ceiling.py`), read when the user's file lacks the key, so a first
demo does not spend its time on them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from setseq import lora as L
from setseq.backbones.toy.files import toy_folder
from setseq.config_load import ASSETS
from setseq.data.cache import file_sha256
from setseq.data.synthetic import CONCEPTS, caption
from setseq.data.video import from_tensor
from setseq.errors import SetseqError
from setseq.eval.edits import composited_palette, edit_suite, score_edit, shape_reproduced, target_spec
from setseq.infer.generate import GenerateOptions
from setseq.io import write_json
from setseq.train.methods import effective_config

__all__ = [
    "CEILING_VERSION",
    "SHIPPED",
    "CeilingCache",
    "base_ceiling",
    "ceiling_key",
    "check_no_lora",
    "composited_colours",
    "default_cache_path",
    "model_fingerprint",
    "suite_fingerprint",
]

#: Bumped when what a ceiling entry means changes (its scoring): older entries are then computed again.
CEILING_VERSION = 1

#: The ceilings that come with the package (read only; the same format as the cache).
SHIPPED = ASSETS / "toy" / "base_ceiling.json"


def default_cache_path() -> Path:
    """`$XDG_CACHE_HOME/setseq/base_ceiling.json` (by default `~/.cache/setseq/base_ceiling.json`)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "setseq" / "base_ceiling.json"


def composited_colours(cfg: Any) -> list[str]:
    """The plain colours a run of `cfg` composites the concept onto (`setseq.eval.edits.composited_palette`):
    its `data.swap_backgrounds` when a stage of the config its method runs with
    (`setseq.train.methods.effective_config`: the baselines swap nothing) swaps backgrounds, else none."""
    eff = effective_config(cfg)
    return composited_palette(
        eff.data.swap_backgrounds, (eff.stage1.background_swap, eff.stage2.background_swap)
    )


def model_fingerprint(model: str) -> str:
    """A hash of the toy model folder's weight files' contents (a retrained model gets a new ceiling)."""
    folder = toy_folder(model)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []:
        h.update(f"{f.relative_to(folder)}:{file_sha256(f)}".encode())
    return h.hexdigest()[:16]


def _base_prompts(spec, shape: str) -> list[tuple[Any, str]]:
    """(edit, the full caption of what it should show) for every edit of the concept's suite."""
    return [(e, caption(target_spec(spec, e))) for e in edit_suite("sks", "zwx", shape, spec)]


def suite_fingerprint(spec, shape: str) -> str:
    """A hash of the concept's edit suite as the ceiling asks it (names, requests, captions)."""
    items = [[e.name, e.kind, e.requested, p] for e, p in _base_prompts(spec, shape)]
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def ceiling_key(model_fp: str, concept: str, seed: int, steps: int | None, suite_fp: str) -> str:
    """The cache key: the model's weights, the concept, the sampling seed and steps, the suite (no method)."""
    return f"v{CEILING_VERSION}|{model_fp}|{concept}|seed{seed}|steps{steps}|{suite_fp}"


def check_no_lora(pm: Any) -> None:
    """Refuse a pipeline that carries a LoRA: the ceiling is the base model's, and a LoRA left attached by
    mistake (loaded from a run, or injected into its transformer, even at scale 0) would make it the method's."""
    layers = L.get_layers(pm.backbone.transformer)
    peft = [n for n, m in pm.backbone.transformer.named_modules() if hasattr(m, "lora_A")]
    if getattr(pm, "lora", None) is not None or layers or peft:
        n = len(layers) + len(peft)
        raise SetseqError(
            f"the base model's ceiling was asked of a model carrying a LoRA ({n} LoRA layers)",
            "load the base model alone: Personalized.load(None, model)",
        )


def base_ceiling(
    pm: Any,
    spec,
    shape: str,
    reference: np.ndarray,
    *,
    seed: int,
    steps: int | None,
) -> dict[str, Any]:
    """Generate and score the concept's edit suite with the base model `pm` (a `Personalized` with no LoRA)
    from full captions. Returns {"shape_reproduced", "edits": {edit name: score (with its "base_prompt")}}."""
    check_no_lora(pm)
    opts = GenerateOptions(seed=seed, steps=steps)
    own = from_tensor(pm.generate(caption(spec), opts))
    shape_ok = shape_reproduced(own, spec)  # the shape counts only where the base model draws it unedited
    edits = {}
    for e, prompt in _base_prompts(spec, shape):
        video = from_tensor(pm.generate(prompt, opts))
        score = score_edit(video, e, reference, spec, shape_reproduced=shape_ok)
        edits[e.name] = {**score, "base_prompt": prompt}
    return {"shape_reproduced": bool(shape_ok), "edits": edits}


class CeilingCache:
    """The ceilings computed so far, in one JSON file: {"version", "entries": {key: entry}}. Reads are
    forgiving (a missing or broken file is empty); each new entry is merged into the file as it is on disk and
    written atomically, so bench runs and demos sharing the file keep each other's entries."""

    def __init__(self, path: str | Path | None = None, shipped: Path | None = SHIPPED) -> None:
        self.path = Path(path).expanduser() if path else default_cache_path()
        self.shipped = shipped  # read when the file lacks a key (None: only the file)

    def _read(self, path: Path | None = None) -> dict[str, Any]:
        try:
            data = json.loads((path or self.path).read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        for path in (self.path, self.shipped):
            entry = self._read(path).get(key) if path is not None else None
            if isinstance(entry, dict) and isinstance(entry.get("edits"), dict):
                return entry
        return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        entries = self._read()
        entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"version": CEILING_VERSION, "entries": entries})

    def ceiling(
        self,
        concept: str,
        shape: str,
        reference: np.ndarray,
        *,
        model: str,
        seed: int,
        steps: int | None,
        pipeline: Callable[[], Any],
        log: Callable[[str], None] = print,
    ) -> dict[str, Any]:
        """The ceiling of `concept` at this sampling seed and steps on `model`: from the file, or computed with
        `pipeline()` (the base model, loaded only when needed) and added to the file."""
        spec = CONCEPTS[concept]
        key = ceiling_key(model_fingerprint(model), concept, seed, steps, suite_fingerprint(spec, shape))
        entry = self.get(key)
        if entry is not None:
            return entry
        log(f"ceiling: the base model on {concept}'s edits from full captions (seed {seed})")
        entry = {"concept": concept, "seed": seed, "steps": steps, "model": model}
        entry |= base_ceiling(pipeline(), spec, shape, reference, seed=seed, steps=steps)
        self.put(key, entry)
        return entry
