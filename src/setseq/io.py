"""Atomic file output: write to a temporary file beside the target, then rename.

A crash, a kill or a full disk leaves either the complete old file, the complete new file, or nothing,
never a half-written output. A `kill -9` can leave the temporary file itself behind: it is named
`.<stem>.<random><suffix>` (a hidden name no reader of outputs ever opens), and `remove_stale_temps`
clears such leftovers from a folder that only one process writes (a run folder, on --resume).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from setseq.errors import SetseqError

# mkstemp / mkdtemp names made here and in setseq.train.checkpoint: ".<stem>.<8 random chars><suffix>";
# safetensors (>= 0.7) itself writes to ".tmp<6 random chars>" beside the target and renames it.
_TEMP_NAME = re.compile(r"^\.(?:tmp[A-Za-z0-9]{6}|.+\.[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?)$")


def disk_error(path: Path, exc: OSError) -> SetseqError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SetseqError(
            f"no space left on the device while writing {path}",
            "free some disk space or choose another --out folder",
        )
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return SetseqError(
            f"cannot write {path}: the folder is read-only or not ours", "choose a writable --out folder"
        )
    return SetseqError(f"cannot write {path}: {exc.strerror or exc}", "check the output folder")


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: itself, or the `(os error N)` that safetensors (Rust) puts in its message
    when a write fails (it raises SafetensorError, not OSError, on a full disk or a read-only folder)."""
    if isinstance(exc, OSError):
        return exc
    m = re.search(r"\(os error (\d+)\)", str(exc))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside `folder` durable (best effort: some file systems refuse to fsync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(folder: str | os.PathLike[str], stems: tuple[str, ...] | None = None) -> list[Path]:
    """Delete the temporary files and folders that a killed writer left in `folder` (not recursive); with
    `stems`, only those of the targets named `<stem>.*`.

    Only for folders one process writes at a time (a run folder on --resume): another writer's temporary
    file would be removed under it."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _TEMP_NAME.match(p.name) and (stems is None or p.name.split(".")[1] in stems):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


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
        raise disk_error(path, exc) from None
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        # mkstemp makes 0600 (and some writers replace the file): outputs get the usual permissions.
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)
        os_exc = os_error_of(exc) if isinstance(exc, Exception) and not isinstance(exc, SetseqError) else None
        if os_exc is not None:
            raise disk_error(path, os_exc) from None
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
