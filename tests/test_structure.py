"""The code's shape: no function in src/ or scripts/ longer than `MAX_LINES` (issue #32)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80  # a function's lines, from `def` (decorators aside) to its last line, signature included


def long_functions(paths: list[Path], limit: int = MAX_LINES) -> list[str]:
    """'file:line name (N lines)' of each function or method in `paths` longer than `limit` lines."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_the_check_finds_a_long_function(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    body = "\n".join(f"        x{i} = {i}" for i in range(80))
    (tmp_path / "f.py").write_text(f"def short():\n    return 1\n\n\nclass A:\n    def long(self):\n{body}\n")
    assert long_functions([tmp_path / "f.py"]) == ["f.py:6 long (81 lines)"]


@pytest.mark.parametrize("folder", ["src", "scripts"])
def test_no_function_is_longer_than_80_lines(folder):
    assert long_functions(python_files(folder)) == []
