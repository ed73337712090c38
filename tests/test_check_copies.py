"""scripts/check_copies.py: a copy kept on purpose (`# Copied from ...`) that drifts from its source fails CI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_copies.py"

SOURCE = '''
class Wan:
    def encode(self, x):
        """Wan's encoder."""
        return x * 2 + 1
'''

COPY = '''
import torch


class LTX:
    @torch.no_grad()
    # Copied from pkg.wan.Wan.encode with Wan->LTX
    def encode(self, x):
        """LTX's encoder."""
        return x * 2 + 1
'''


@pytest.fixture(scope="module")
def check_copies():
    spec = importlib.util.spec_from_file_location("check_copies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, copy: str) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "wan.py").write_text(SOURCE)
    (root / "pkg" / "ltx.py").write_text(copy)
    return root


def test_a_faithful_copy_passes(check_copies, tmp_path):
    assert check_copies.check_tree(_tree(tmp_path, COPY)) == []
    assert check_copies.main(["--root", str(tmp_path)]) == 0


def test_a_drifted_copy_fails(check_copies, tmp_path, capsys):
    root = _tree(tmp_path, COPY.replace("x * 2 + 1", "x * 2 + 2"))
    problems = check_copies.check_tree(root)
    assert len(problems) == 1 and "ltx.py:7" in problems[0] and "pkg.wan.Wan.encode" in problems[0]
    assert check_copies.main(["--root", str(root)]) == 1
    assert "differs from pkg.wan.Wan.encode" in capsys.readouterr().err


def test_a_marker_naming_nothing_fails(check_copies, tmp_path):
    root = _tree(tmp_path, COPY.replace("Wan.encode", "Wan.decode"))
    assert "Wan.decode is not defined" in check_copies.check_tree(root)[0]
    root = _tree(tmp_path / "b", COPY.replace("pkg.wan", "pkg.cogvideox"))
    assert "cogvideox.Wan.encode is not defined" in check_copies.check_tree(root)[0]
    assert (
        "no module of other.wan"
        in check_copies.check_tree(_tree(tmp_path / "c", COPY.replace("pkg.wan", "other.wan")))[0]
    )


def test_the_package_has_no_stale_copy(check_copies):
    assert check_copies.check_tree(SCRIPT.parent.parent / "src") == []
