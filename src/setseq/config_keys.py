"""`setseq train --list-keys` and the flags' help: every config key with its default and its help, read from
the dataclasses of `setseq.config` (a field's help is the comment beside it in their source), and the value a
recipe YAML gives a key."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

from setseq.config import _SECTIONS, RunConfig
from setseq.config_load import TOY_RECIPE, load_yaml, resolve_config


def _field_help(cls: type) -> dict[str, str]:
    """Each field's help, read from the comments of the dataclass's source (declared once, there): the
    comment lines just above the field and the comment on its own line(s)."""
    # (here: only `--list-keys` reads the dataclasses' source; `setseq train --help` starts without them)
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    src = textwrap.dedent(inspect.getsource(cls))
    lines = src.splitlines()
    comments: dict[int, str] = {}  # line (1-based) -> its comment's text
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    block: list[str] = []  # the comment above the last field: it covers the uncommented fields just below it
    for node in ast.parse(src).body[0].body:  # type: ignore[attr-defined]
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, n = [], node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        own = [comments[i] for i in range(node.lineno, node.end_lineno or node.lineno) if i in comments]
        own += [comments[node.end_lineno]] if node.end_lineno in comments else []
        if above:
            block = above
        elif not own and lines[node.lineno - 2].strip():  # right below the last field, no comment of its own
            above = block
        out[node.target.id] = " ".join(above + own).strip()
    return out


def config_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) of every config key, section by section, from the dataclasses."""
    defaults = RunConfig()
    out: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(RunConfig):
        cls = _SECTIONS.get((RunConfig, f.name))
        if cls is None:
            out.append((f.name, getattr(defaults, f.name), _field_help(RunConfig)[f.name]))
            continue
        docs = _field_help(cls)
        section = getattr(defaults, f.name)
        out += [
            (f"{f.name}.{g.name}", getattr(section, g.name), docs[g.name]) for g in dataclasses.fields(cls)
        ]
    return out


def format_keys() -> str:
    """`setseq train --list-keys`: every key with its default, the toy recipe's value where it differs, and
    its help."""
    recipe = resolve_config(TOY_RECIPE).to_dict()
    rows = []
    for key, default, text in config_keys():
        section, _, name = key.rpartition(".")
        toy = recipe[section][name] if section else recipe[name]
        value = (
            yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        )
        if toy != default:
            value += (
                f" (toy: {yaml.safe_dump(toy, default_flow_style=True).strip().removesuffix('...').strip()})"
            )
        rows.append((key, value, text))
    width = 44
    head = (
        "Config keys (set as key=value after `setseq train`, or in a --config YAML), with their defaults "
        f"(the paper's recipe; 'toy:' the toy recipe's, {TOY_RECIPE.stem}, the default on a toy model):"
    )
    return "\n".join([head, *(f"  {f'{k} = {v}':{width}s}  {t}" for k, v, t in rows)])


def key_default(key: str) -> Any:
    """The default of one dotted config key, read from the dataclasses' fields without building a
    `RunConfig` (whose data section imports numpy): for `setseq --help`, which must start fast."""
    section, _, name = key.rpartition(".")
    run_fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    if not section:
        return run_fields[name].default
    if section in ("stage1", "stage2"):  # the two stages' defaults differ (their dropconnect)
        return getattr(run_fields[section].default_factory(), name)  # type: ignore[misc]
    f = {g.name: g for g in dataclasses.fields(_SECTIONS[(RunConfig, section)])}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


@functools.lru_cache(maxsize=4)
def _recipe_data(recipe: Path) -> dict[str, Any]:
    return load_yaml(recipe)  # (read-only: shared by every call)


def recipe_value(recipe: Path, key: str) -> Any:
    """The value a recipe YAML sets for a dotted key, or None where it sets none (no dataclass built)."""
    node: Any = _recipe_data(recipe)
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
