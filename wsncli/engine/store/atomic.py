"""Atomic file replacement: temporary file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from wsncli.errors import WsnError

TMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """Where atomic_write stages `path`: `.<name>.tmp-<pid>` in the same folder."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def atomic_write(path: Path, write: Callable[[BinaryIO], None], error: type[WsnError] = WsnError) -> int:
    """Replace `path` with what `write(f)` writes, all or nothing; returns the new size in bytes.

    On any failure (full disk, read-only folder, Ctrl-C) the old file is untouched and the
    temporary file is removed; OSError becomes `error` with a one-line message. Only a SIGKILL or a
    power cut can leave the temporary file behind (see remove_stale_temps).
    """
    path = Path(path)
    tmp = temp_path(path)
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


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temporary files a killed writer of `path` left; call only while holding path's lock
    (then no other writer is running). Returns what was removed; failures are ignored."""
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{_glob_escape(path.name)}{TMP_MARK}*"))
    except OSError:
        return removed
    for tmp in candidates:
        if tmp.name[len(path.name) + 1 + len(TMP_MARK):].isdigit():
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


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
