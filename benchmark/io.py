"""Crash-safe file writes, and the one way the suite reads weights files.

Every helper writes to a temporary file in the destination directory and then
moves it over the destination with :func:`os.replace`, so a reader sees either
the old content or the complete new content, never a partial file. If anything
fails before the move, the temporary file is removed and the destination is
left untouched.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "load_tensors"]

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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically and durably (a reader sees the old file or the new, never half)."""
    import io

    import torch  # here, not at the top: the light modules that write files never need it

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), fsync=True)


def load_tensors(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers of them, never code.

    A file that holds anything else (a pickled object, which could run code when loaded) or is no torch file at all
    raises :class:`benchmark.errors.DataError` naming ``what`` and the file, in one sentence.
    """
    import torch  # here, not at the top: the light modules that write files never need it

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"Refusing to load {what} {path}: it is not a plain file of tensors and numbers (torch.load "
                        f"with weights_only=True said: {first[:200]}). The suite only reads weights files made of "
                        f"tensors; delete the file or replace it with one the suite wrote.") from None
