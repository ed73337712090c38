"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, a kill or a full disk leaves either the complete old file, the complete new file, or nothing,
never a half-written output.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from setseq.errors import SetseqError


def _disk_error(path: Path, exc: OSError) -> SetseqError:
    if exc.errno == errno.ENOSPC:
        return SetseqError(
            f"no space left on the device while writing {path}",
            "free some disk space or choose another --out folder",
        )
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return SetseqError(
            f"cannot write {path}: the folder is read-only or not ours", "choose a writable --out folder"
        )
    return SetseqError(f"cannot write {path}: {exc.strerror or exc}", "check the output folder")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    The temporary name keeps the target's suffix (some writers pick the format from it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent
        )
        os.close(fd)
    except OSError as exc:
        raise _disk_error(path, exc) from None
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
