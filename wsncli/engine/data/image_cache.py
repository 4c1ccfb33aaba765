"""The on-disk cache of decoded image tasks: one uncompressed .npz per key, written atomically.

A key is the sha256 of everything a task's arrays depend on (the resolved folder, every file's
relative name, size and mtime_ns, the settings and the reader version), so a changed file or setting
reads as a miss. A cache file is never trusted: one that fails any check is ignored (and rewritten by
the caller), and a cache folder that cannot be written is skipped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import numpy as np

READER_VERSION = 1  # bump when decoding changes what the arrays of the same files hold
CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test")
_HEADER_SLACK = 1 << 20  # bytes of zip and npy headers allowed on top of the array data


def default_cache_dir() -> Path:
    """$WSN_CACHE_DIR when set and not empty, else ~/.cache/wsn/images."""
    value = os.environ.get("WSN_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "wsn" / "images"


def cache_key(folder: Path, settings: Mapping[str, object], files: Sequence[tuple[str, int, int]]) -> str:
    """sha256 hex of canonical JSON: reader version, resolved folder, settings, [(relname, size, mtime_ns)]."""
    doc = {
        "reader": READER_VERSION,
        "folder": str(folder),
        "settings": dict(settings),
        "files": [list(f) for f in files],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"img-{key}.npz"


def load_cached(
    path: Path, y_train: np.ndarray, y_test: np.ndarray, channels: int | None, image_size: int | None, max_bytes: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(x_train, x_test) read-only from a cache file that passes every check, else None.

    Checks: exactly the four arrays, stored uncompressed and within `max_bytes`; uint8 (N, C, H, W)
    images with C in (1, 3) (== `channels` and H == W == `image_size` when given), the same C, H, W
    for both splits, and int64 labels equal to the expected ones.
    """
    try:
        with open(path, "rb") as fh:
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
            expected = sorted(f"{k}.npy" for k in CACHE_KEYS)
            if sorted(i.filename for i in infos) != expected or any(
                i.compress_type != zipfile.ZIP_STORED for i in infos
            ):
                return None
            if sum(i.file_size for i in infos) > max_bytes + _HEADER_SLACK:
                return None
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as z:
                arrays = {k: z[k] for k in CACHE_KEYS}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return None
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    for x in (x_train, x_test):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] < 1 or x.shape[3] < 1:
            return None
    if x_train.shape[1:] != x_test.shape[1:]:
        return None
    if (channels is not None and x_train.shape[1] != channels) or (
        image_size is not None and x_train.shape[2:] != (image_size, image_size)
    ):
        return None
    for y, want, x in ((arrays["y_train"], y_train, x_train), (arrays["y_test"], y_test, x_test)):
        if y.dtype != np.int64 or y.shape != want.shape or len(x) != len(want) or not np.array_equal(y, want):
            return None
    x_train.setflags(write=False)
    x_test.setflags(write=False)
    return x_train, x_test


def store_cached(path: Path, arrays: Mapping[str, np.ndarray]) -> bool:
    """Write `arrays` to `path` atomically (temporary file beside it + os.replace); False if it cannot.

    The folder is created with mode 0o700 when missing. On any failure nothing is left behind.
    """
    if not _ensure_folder(path.parent):
        return False
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".img-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{k: arrays[k] for k in CACHE_KEYS})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)


def _ensure_folder(folder: Path) -> bool:
    if folder.is_dir():
        return True
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    except FileExistsError:
        return folder.is_dir()
    except OSError:
        return False
    return True
