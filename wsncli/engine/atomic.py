"""Atomic file replacement: temporary file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

from wsncli.errors import WsnError


def atomic_write(path: Path, write: Callable[[BinaryIO], None], error: type[WsnError] = WsnError) -> int:
    """Replace `path` with what `write(f)` writes, all or nothing; returns the new size in bytes.

    On any failure (full disk, read-only folder, Ctrl-C) the old file is untouched and the
    temporary file is removed; OSError becomes `error` with a one-line message.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return size
    except OSError as exc:
        raise error(f"{path}: cannot write: {exc.strerror or exc}; the old file (if any) is unchanged") from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
