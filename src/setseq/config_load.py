"""Building a run's configuration: `RunConfig` (`setseq.config`) from a YAML file, flags and dotted
`key=value` overrides; the mask options that follow whether a mask is given; the shipped recipes by name; and
`setseq train`'s config (its default recipe per model, the toy tokenizer's words).

Precedence: defaults < `--config run.yaml` < command-line flags < `key=value` overrides. The resolved config
is saved as `config.yaml` in the run folder; `--resume` reads it back from there.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from setseq.config import _SECTIONS, MASK_OPTIONS_OFF, ModelConfig, RunConfig, StageConfig, did_you_mean
from setseq.errors import SetseqError

# ----------------------------------------------------------------------------------------------------------
# Building from dicts, YAML and overrides


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise SetseqError(
            f"config section '{where or 'top level'}' must be a mapping, got {type(data).__name__}",
            "fix the YAML",
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        near = did_you_mean(unknown[0], fields, f"{where}." if where else "")
        raise SetseqError(
            f"unknown config key '{key}'",
            f"{near or 'valid keys here are: ' + ', '.join(fields)}; `setseq train --list-keys` lists every key",
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        sub = _SECTIONS.get((cls, name))
        kwargs[name] = _build(sub, value, key) if sub else _check_type(key, value, _field_kinds(cls)[name])
    if cls is RunConfig:
        defaults = RunConfig()
        for stage in ("stage1", "stage2"):
            if stage in data:
                # Merge over the stage's own defaults (stage 2's dropconnect is 0.5, not 0.8).
                merged = dataclasses.asdict(getattr(defaults, stage)) | data[stage]
                kwargs[stage] = _build(StageConfig, merged, stage)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SetseqError(
            f"invalid config in '{where or 'top level'}': {exc}", "fix the value in the YAML or the override"
        ) from None


@functools.cache
def _field_kinds(cls: type) -> dict[str, type]:
    """Each field's type as `_check_type` checks it, read from the dataclass's annotations: `X | None` -> X,
    `list[...]` -> list; a type it does not check (Any) -> object."""
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
            hint = args[0]
        hint = typing.get_origin(hint) or hint
        kinds[name] = hint if hint in (bool, int, float, str, list) else object
    return kinds


def _check_type(where: str, value: Any, kind: type) -> Any:
    """The value, with YAML 1.1's string '1e-4' read as a number; values of the wrong type are rejected."""
    if value is None or kind is object:
        return value
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind in (int, float):  # (an int is a float here; a bool is neither)
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise SetseqError(
            f"config key '{where}' must be {kind.__name__}, got {value!r}",
            "fix the value in the YAML or the override",
        )
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['stage1.steps=600', 'lora.basis=up'] -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise SetseqError(
                f"cannot read the override '{item}'",
                "write overrides as dotted key=value, e.g. stage1.steps=600",
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except (yaml.YAMLError, RecursionError):
            raise SetseqError(
                f"cannot parse the value of override '{item}'", "quote it or fix its syntax"
            ) from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SetseqError(f"override '{item}' conflicts with another override", "give each key once")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = find_recipe(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:  # (RecursionError: absurd nesting)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SetseqError(
            f"config file {p} is not valid YAML{where}", "fix its syntax (yaml.safe_load must read it)"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SetseqError(f"config file {p} must hold a mapping of sections", "see configs/ for examples")
    return data


def resolve_config(
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    *,
    mask_defaults: bool = False,
    notes: list[str] | None = None,
) -> RunConfig:
    """Defaults < YAML file (a path, or a shipped recipe's name) < flags (a nested dict of the flags the user gave) < key=value overrides;
    `mask_defaults` (`setseq train`): the mask options follow whether a mask is given (`mask_recipe`), its
    note printed to stderr, or added to `notes` when a list is given."""
    file_data: dict[str, Any] = load_yaml(config_file) if config_file else {}
    data = file_data
    if flags:
        data = deep_merge(data, flags)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    if not mask_defaults:
        return _build(RunConfig, data, "")
    said: list[str] = []
    cfg = _build(RunConfig, mask_recipe(file_data, data, said), "")
    if notes is not None:
        notes += said  # the caller says them once its own checks pass (an error then stays the only line)
    for note in said if notes is None else []:
        print(note, file=sys.stderr)
    return cfg


# With a subject mask (a file or `auto`) and no mask option set, the stages use what the toy measurement
# supports (BENCHMARKS.md, "Edits" and "stage 2 swaps"): every stage-1 frame and a quarter of the stage-2
# clips composited onto plain backgrounds.
MASK_RECIPE = {"stage1": 1.0, "stage2": 0.25}
# A segmenter's mask (`--mask auto`) carries a halo of the old scene: its edge is feathered by this many pixels
# unless the config shapes it (`data.mask_erode` / `data.mask_feather`). In the toy world, feathering a halo by
# 1 px won back most of the reproduced motion the halo cost, and eroding it did not (BENCHMARKS.md,
# "Imperfect masks").
AUTO_MASK_FEATHER = 1.0


def mask_recipe(file_data: dict[str, Any], data: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """`data` with the mask recipe filled in: a mask given and no stage's mask option set -> `MASK_RECIPE`'s
    swaps (the attention loss adds to them; the other mask options replace them); `--mask auto` and neither
    edge option set -> the edge feathered (`AUTO_MASK_FEATHER`); no mask, and the mask options set by the
    config file alone (a recipe such as toy-demo.yaml, on a
    user's own video) -> those options off, with a one-line note (an option given as a flag or override
    stays, and `check_mask` refuses it); the note is appended to `notes`."""
    stages = {n: dict(data.get(n) or {}) for n in MASK_RECIPE}
    given = dict(data.get("data") or {})
    has_mask = bool(given.get("mask"))
    if given.get("mask") == "auto" and not {"mask_erode", "mask_feather"} & set(given):
        data = {**data, "data": {**given, "mask_feather": AUTO_MASK_FEATHER}}
        notes.append(
            f"note: --mask auto: the mask's edge is feathered by {AUTO_MASK_FEATHER:g} px against a segmenter's "
            "halo (data.mask_feather; data.mask_feather=0 keeps it sharp)"
        )
    replacing = [k for k in MASK_OPTIONS_OFF if k != "attention_loss"]
    if has_mask and not any(k in stages[n] for n in stages for k in replacing):
        return {**data, **{n: {**stages[n], "background_swap": v} for n, v in MASK_RECIPE.items()}}
    if has_mask or (data.get("multi") or {}).get("concepts"):
        return data
    off = MASK_OPTIONS_OFF
    from_file = [  # the options the file alone turns on (a flag or override that does is the user's)
        (n, k)
        for n in stages
        for k in MASK_OPTIONS_OFF
        if k in (file_data.get(n) or {})
        and stages[n].get(k) == (file_data.get(n) or {}).get(k)
        and stages[n][k] != off[k]
    ]
    if not from_file:
        return data
    notes.append(
        f"note: the config's {', '.join(f'{n}.{k}' for n, k in from_file)} need a subject mask and none was "
        "given: they are off (pass --mask auto to make one from the class word, or --mask FILE)"
    )
    for n, k in from_file:
        stages[n][k] = off[k]
    return {**data, **stages}


# ----------------------------------------------------------------------------------------------------------
# Recipes by name and `setseq train`'s config

ASSETS = Path(__file__).resolve().parent / "assets"
#: The toy models' recipe (`setseq demo`, `setseq bench`, and `setseq train` on a toy model by default).
TOY_RECIPE = ASSETS / "toy-demo.yaml"
# The repository's configs/ folder: there in a source checkout (`pip install -e .`), not in a wheel.
_REPO_CONFIGS = ASSETS.parent.parent.parent / "configs"


def recipes() -> dict[str, Path]:
    """The shipped recipes by name (file stem): `assets/toy-demo.yaml` and the repository's `configs/*.yaml`."""
    found = [*ASSETS.glob("*.yaml"), *(_REPO_CONFIGS.glob("*.yaml") if _REPO_CONFIGS.is_dir() else [])]
    return {p.stem: p for p in sorted(found)}


def find_recipe(config: str | Path) -> Path:
    """The YAML file of `--config`: a path, or the name of a shipped recipe (`toy-demo`, `wan2.1-t2v-1.3b`)."""
    p = Path(config).expanduser()
    if p.is_file():
        return p
    known = recipes()
    name = p.name.removesuffix(".yaml")
    if name in known and str(config).removesuffix(".yaml") == name:
        return known[name]
    near = did_you_mean(name, known)
    raise SetseqError(
        f"config file {config} does not exist, and no shipped recipe has that name",
        f"{near + ' ' if near else ''}pass a YAML path, or a recipe's name: {', '.join(known)}",
    )


def _flag_tree(flags: dict[str, Any] | None, overrides: list[str] | None) -> dict[str, Any]:
    """What the user set on the command line, as one nested dict (flags, then overrides over them)."""
    return deep_merge(flags or {}, parse_overrides(overrides or []))


def resolve_train_config(
    config: str | Path | None,
    flags: dict[str, Any] | None,
    overrides: list[str] | None,
    log: Any = print,
) -> RunConfig:
    """`setseq train`'s config: `resolve_config` over the recipe `config` names, or with none the model's
    own: the toy recipe for a toy model (its rank and learning rate are sized for it; the defaults are the
    paper's, for Wan). The mask options follow whether a mask is given (`mask_recipe`: a recipe's swaps
    are turned off, with a note, on a video with no mask), and a prompt word the toy tokenizer does not know
    is refused (`check_toy_words`)."""
    user = _flag_tree(flags, overrides)
    recipe = find_recipe(config) if config else None
    default = recipe is None and (user.get("model") or {}).get("backbone", ModelConfig.backbone) == "toy"
    if default:
        log(f"recipe: {TOY_RECIPE.stem}, the toy model's (--config NAME or a YAML path picks another)")
    notes: list[str] = []
    cfg = resolve_config(TOY_RECIPE if default else recipe, flags, overrides, mask_defaults=True, notes=notes)
    if cfg.model.backbone == "toy":
        check_toy_words(cfg)
    for note in notes:
        print(note, file=sys.stderr)
    return cfg


def check_toy_words(cfg: RunConfig) -> None:
    """Refuse a concept word the toy model's word-level tokenizer does not know: it would read it as <unk>,
    silently the same token as every other unknown word."""
    # (here: the toy backbone package loads torch, which `setseq train --help` must not)
    from setseq.backbones.toy.files import toy_folder
    from setseq.backbones.toy.tokenizer import IDENTIFIER_TOKENS

    vocab_file = toy_folder(cfg.model.path) / "tokenizer" / "tokenizer.json"
    try:
        vocab = set(json.loads(vocab_file.read_text())["model"]["vocab"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # an unreadable toy model is refused, by name, when it loads
    bad: dict[str, str] = {}  # unknown word -> the concept key it is in
    for i, (_, c) in enumerate(cfg.concepts()):
        for key in ("token", "motion_token", "class_word", "action", "camera", "static_prompt"):
            for word in re.findall(r"\w+", (getattr(c, key) or "").lower()):
                if word not in vocab:
                    bad.setdefault(word, f"multi.concepts[{i - 1}].{key}" if i else f"concept.{key}")
    if bad:
        ids = [t for t in IDENTIFIER_TOKENS if t in vocab]
        classes = [w for w in ("person", "object", "shape", "circle", "square", "star") if w in vocab]
        raise SetseqError(
            f"the toy model's tokenizer does not know {', '.join(f'{w!r} ({k})' for w, k in bad.items())}: it "
            "would read each as <unk>",
            f"use words it knows, e.g. --token {ids[0]} (its identifier tokens: {', '.join(ids)}) and "
            f"--class-word {classes[0]} ({', '.join(classes)}, ...; all {len(vocab) - 3} words are in {vocab_file})",
        )
