"""Fail when a copy kept on purpose no longer matches its source (after diffusers' `utils/check_copies.py`).

A function or class copied on purpose is marked on the line just above it (below its decorators, if any):

    # Copied from setseq.backbones.wan.WanBackbone.encode_prompt with Wan->LTX
    def encode_prompt(self, prompts): ...

The marked object must equal the named one (module path, then the object's dotted name inside the module), both
dedented, after the optional `with A->B, C->D` replacements applied to the source. The marker itself and
the decorators above it are not compared. Files are read as text (nothing is imported), so this runs before
the package is installed.

    python scripts/check_copies.py [--root src]    exit 1 and one line per stale copy
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from pathlib import Path

MARKER = re.compile(r"^\s*# Copied from ([\w.]+)(?: with (.+?))?\s*$")


def _objects(tree: ast.AST) -> dict[str, ast.AST]:
    """Every function and class of a module by its dotted name (`Class.method`)."""
    found: dict[str, ast.AST] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[prefix + child.name] = child
                walk(child, f"{prefix}{child.name}.")

    walk(tree, "")
    return found


def _code(lines: list[str], node: ast.AST) -> str:
    """The object's text from its `def` / `class` line to its end, dedented, without trailing blank lines."""
    return textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])).rstrip() + "\n"


def _source(root: Path, dotted: str) -> tuple[str | None, str]:
    """(code, "") of the object named by `dotted` under `root`, or (None, why not)."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module file
        base = root.joinpath(*parts[:i])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                text = path.read_text()
                node = _objects(ast.parse(text)).get(".".join(parts[i:]))
                if node is None:
                    return None, f"{'.'.join(parts[i:])} is not defined in {path}"
                return _code(text.splitlines(), node), ""
    return None, f"no module of {dotted} under {root}"


def check_file(path: Path, root: Path) -> list[str]:
    """One message per marked copy in `path` that differs from its source or names none."""
    text = path.read_text()
    if "# Copied from" not in text:
        return []
    lines = text.splitlines()
    starts = {n.lineno: n for n in _objects(ast.parse(text)).values()}
    problems = []
    for i, line in enumerate(lines, start=1):
        m = MARKER.match(line)
        if m is None:
            continue
        where = f"{path}:{i}"
        node = starts.get(i + 1)
        if node is None:
            problems.append(f"{where}: '# Copied from' is not directly above a def or class")
            continue
        source, why = _source(root, m.group(1))
        if source is None:
            problems.append(f"{where}: {why}")
            continue
        for pair in (m.group(2) or "").split(","):
            if "->" in pair:
                old, new = (s.strip() for s in pair.split("->", 1))
                source = source.replace(old, new)
        if _code(lines, node) != source:
            problems.append(f"{where}: {getattr(node, 'name', '?')} differs from {m.group(1)}")
    return problems


def check_tree(root: Path) -> list[str]:
    return [p for path in sorted(root.rglob("*.py")) for p in check_file(path, root)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "src")
    problems = check_tree(parser.parse_args(argv).root)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("make each copy match its source again, or drop the '# Copied from' line", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
