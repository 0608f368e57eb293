"""Crash-safe file writes.

Every helper writes to a temporary file in the destination directory and then
moves it over the destination with :func:`os.replace`, so a reader sees either
the old content or the complete new content, never a partial file. If anything
fails before the move, the temporary file is removed and the destination is
left untouched.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json"]

_DEFAULT_MODE = 0o644


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so a rename survives a crash."""
    flags = getattr(os, "O_DIRECTORY", 0) | os.O_RDONLY
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike[str], data: bytes, *, fsync: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = _DEFAULT_MODE
    tmp = tempfile.NamedTemporaryFile(
        mode="wb", delete=False, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            if fsync:
                os.fsync(tmp.fileno())
        os.chmod(tmp.name, mode)
        os.replace(tmp.name, path)
    except BaseException:
        try:
            os.unlink(tmp.name)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Atomically replace ``path`` with ``data``; parent directories are created."""
    return _atomic_write(path, bytes(data), fsync=fsync)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = False
) -> Path:
    """Atomically replace ``path`` with ``text`` (encoded with ``encoding``)."""
    return _atomic_write(path, text.encode(encoding), fsync=fsync)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as JSON (sorted keys, indent 2, trailing newline).

    The object is serialised before anything touches the disk, so an object
    that cannot be serialised raises (``TypeError``/``ValueError``) and leaves
    an existing file intact. The data is fsynced before the replace.
    """
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return _atomic_write(path, text.encode("utf-8"), fsync=True)
