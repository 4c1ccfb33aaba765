"""File readers for wsn's benchmarks: MNIST-style IDX, CIFAR python-pickle batches, npz, digits.

Nothing here executes code from a file: npz loads with `allow_pickle=False` (after every member's
declared size is checked against the file and a limit) and CIFAR batches go through a restricted
unpickler that only rebuilds numpy arrays. Parsed arrays are cached per process
(keyed on path, mtime and size) and returned read-only, so callers must copy before changing them.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from wsncli.engine.data.pinned import Expected, check_array, expected, read_checked
from wsncli.engine.limits import env_limit
from wsncli.errors import DataError

MAX_DATA_BYTES = 8 << 30  # default of $WSN_MAX_DATA_BYTES: what one data file may expand to
MAX_NPZ_MEMBERS = 64
BOMB_MIN_BYTES = 64 << 20  # a compressed member larger than this ...
BOMB_RATIO = 200  # ... that expands more than this many times is refused as a zip bomb

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _stat_key(path: Path) -> tuple[str, int, int]:
    """The cache key of a file: its resolved path, mtime and size (so a rewritten file is re-read)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


def find_file(folder: Path, name: str, gz_ok: bool) -> Path | None:
    """`folder/name`, else `folder/name.gz` when `gz_ok`; None when neither is a file."""
    for cand in (folder / name, folder / f"{name}.gz") if gz_ok else (folder / name,):
        if cand.is_file():
            return cand
    return None


def locate(
    name: str, what: str, candidates: list[Path], files: tuple[str, ...], gz_ok: bool, root: Path | None, sub: str
) -> dict[str, Path]:
    """The first candidate folder holding every file in `files` (each plain, or .gz when `gz_ok`).

    Raises DataError naming the files expected, the folders searched and how to point wsn at them;
    a folder holding only some of the files is reported with the ones it lacks.
    """
    sfx = "[.gz]" if gz_ok else ""
    for folder in candidates:
        found = {n: find_file(folder, n, gz_ok) for n in files}
        if all(found.values()):
            return {n: p for n, p in found.items() if p is not None}
        if any(found.values()):
            lacking = ", ".join(n + sfx for n, p in found.items() if p is None)
            raise DataError(f"{name}: folder {folder} lacks {lacking}")
    expected = ", ".join(f + sfx for f in files)
    looked = f"; looked in {', '.join(map(str, candidates))}" if candidates else ""
    where = "DIR" if root is None else str(root)
    how = "pass --data-root DIR or set WSN_DATA_ROOT=DIR" if root is None else "from --data-root or WSN_DATA_ROOT"
    raise DataError(f"{name}: {what} not found: put {expected} in {where}/{sub}/ or {where}/ ({how}){looked}")


def read_idx(path: Path, name: str = "", expect: Expected | None = None) -> np.ndarray:
    """The array in an IDX file (gzipped when its name ends in .gz), read-only, native byte order;
    checked against `expect` (digest before parsing, then shape or labels per class) when given."""
    return _read_idx(*_stat_key(path), name, expect)


@lru_cache(maxsize=16)
def _read_idx(path: str, _mtime: int, _size: int, name: str, expect: Expected | None) -> np.ndarray:
    raw = read_checked(name or path, Path(path), expect)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header promises shape {dims} ({expected} bytes) but the file holds {len(raw) - header} "
            "bytes of data"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    if expect is not None:
        check_array(name or path, path, expect, arr.shape, arr if arr.ndim == 1 else None)
    return _frozen(arr.astype(dtype.newbyteorder("="), copy=True))


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """The one codec call protocol-2 pickles use to carry bytes; no other codec is allowed."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and dtypes and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) not in self._ALLOWED:
            raise _Forbidden(f"{module}.{name}")
        if module.endswith("multiarray"):  # numpy.core (old pickles) and numpy._core name one module
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 1.26
                from numpy.core import multiarray
            return getattr(multiarray, name)
        return super().find_class(module, name)


class _Forbidden(Exception):
    """Raised inside the unpickler for a global that is not allowed."""


def read_pickle_dict(path: Path, name: str = "", expect: Expected | None = None) -> dict[str, object]:
    """A CIFAR-style python-pickle batch: a dict, with bytes keys decoded to str. Read-only arrays.
    With `expect`, the file's digest is checked before anything is unpickled."""
    return _read_pickle_dict(*_stat_key(path), name, expect)


def unpickle_arrays(data: bytes, where: str, encoding: str = "bytes") -> object:
    """Unpickle `data` with an unpickler that rebuilds numpy arrays, tuples, lists, dicts and nothing
    else (no code runs); DataError naming `where` on anything else."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding=encoding).load()
    except _Forbidden as exc:
        raise DataError(
            f"{where}: refused to load: the pickle asks for {exc}, and only numpy arrays are allowed"
        ) from None
    except MemoryError:
        raise DataError(f"{where}: the pickle asks for more memory than is available") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is bad data
        raise DataError(f"{where}: not a readable python pickle ({type(exc).__name__}: {exc})") from None


@lru_cache(maxsize=16)
def _read_pickle_dict(path: str, _mtime: int, _size: int, name: str, expect: Expected | None) -> dict[str, object]:
    obj = unpickle_arrays(read_checked(name or path, Path(path), expect), path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        out[key.decode("latin1") if isinstance(key, bytes) else str(key)] = value
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return out


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array in an npz file (pickled object arrays refused), read-only; sizes checked first."""
    return _read_npz(*_stat_key(path))


def data_limit() -> int:
    """The most bytes one data file may expand to: $WSN_MAX_DATA_BYTES, else MAX_DATA_BYTES."""
    return env_limit("WSN_MAX_DATA_BYTES", MAX_DATA_BYTES, "bytes", DataError)


def _npz_members(path: str, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Check every member's declared size, its compression ratio and its .npy header before any
    array is allocated: a header or zip entry that promises more than the file holds is refused."""
    infos = zf.infolist()
    if len(infos) > MAX_NPZ_MEMBERS:
        raise DataError(f"{path}: {len(infos)} arrays, over the limit of {MAX_NPZ_MEMBERS}")
    limit, total = data_limit(), 0
    for info in infos:
        total += info.file_size
        if total > limit:
            raise DataError(f"{path}: its arrays expand to over {limit} bytes (limit WSN_MAX_DATA_BYTES)")
        if (
            info.compress_type != zipfile.ZIP_STORED
            and info.file_size > BOMB_MIN_BYTES
            and info.file_size > BOMB_RATIO * max(info.compress_size, 1)
        ):
            raise DataError(
                f"{path}: member {info.filename[:60]!r} expands {info.file_size // max(info.compress_size, 1)}-fold "
                f"({info.file_size} bytes from {info.compress_size}): refused as a zip bomb"
            )
        with zf.open(info) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(
                    version
                )
                if reader is None:
                    raise ValueError(f"npy format version {version} is not supported")
                shape, _fortran, dtype = reader(fh, max_header_size=10000)
            except ValueError as exc:
                raise DataError(f"{path}: member {info.filename[:60]!r} is not a .npy array ({exc})") from None
        if dtype.hasobject:
            raise DataError(
                f"{path}: member {info.filename[:60]!r} holds Python objects (pickles), which wsn never loads"
            )
        declared = math.prod(shape) * dtype.itemsize
        if declared > info.file_size:
            raise DataError(
                f"{path}: member {info.filename[:60]!r} declares {shape} {dtype} ({declared} bytes) "
                f"but holds only {info.file_size} bytes"
            )
    return infos


@lru_cache(maxsize=8)
def _read_npz(path: str, _mtime: int, _size: int) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = _npz_members(path, zf)
            out = {}
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as fh:
                    out[name] = _frozen(np.lib.format.read_array(fh, allow_pickle=False))
            return out
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not an npz file (numpy's zip of arrays, written by np.savez)") from None
    except (OSError, ValueError, EOFError, KeyError, zlib.error, MemoryError) as exc:
        raise DataError(f"{path}: not a readable npz file ({type(exc).__name__}: {str(exc)[:120]})") from None


DIGITS_FILE = Path(__file__).with_name("digits.npz")


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 8x8 digits (UCI, 1,797 images): (x uint8 (1797, 64) in 0..16, y int64 (1797,)),
    checked against the file's pinned sha256 first."""
    exp = expected("wsn/digits.npz")
    data = read_checked("split-digits", DIGITS_FILE, exp)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        x, y = np.asarray(z["x"], np.uint8), np.asarray(z["y"], np.int64)
    check_array("split-digits", DIGITS_FILE, exp, x.shape)
    return _frozen(x), _frozen(y)


def env_data_root() -> Path | None:
    """$WSN_DATA_ROOT as a path, or None when unset or empty."""
    value = os.environ.get("WSN_DATA_ROOT", "").strip()
    return Path(value).expanduser() if value else None


def mnist_arrays(name: str, found: dict[str, Path], dataset: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train images, labels), (test images, labels)] from located MNIST-style IDX files, each checked
    against its pinned entry `<dataset>/<file>` (docs/DATA.md) before use."""
    out = []
    for split in ("train", "t10k"):
        inames = (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")
        (x, ipath), (y, lpath) = ((read_idx(found[n], name, expected(f"{dataset}/{n}")), found[n]) for n in inames)
        check_image_labels(name, ipath, lpath, x, y)
        out.append((x, y.astype(np.int64)))
    return out


def check_image_labels(name: str, ipath: Path, lpath: Path, x: np.ndarray, y: np.ndarray) -> None:
    """28x28 images with one label 0..9 each."""
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{name}: {ipath} holds images of shape {x.shape[1:]}, expected 28x28")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{name}: {lpath} holds {len(y)} labels for the {len(x)} images of {ipath}")
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) <= 9:
        raise DataError(f"{name}: {lpath} has labels outside 0..9")


def cifar_batch(path: Path, label_key: str, n_labels: int, name: str = "", key: str | None = None):
    """(data uint8 (N, 3072), labels int64 (N,)) of one CIFAR batch, checked (against the pinned entry
    `key` first, when given)."""
    exp = expected(key) if key is not None else None
    d = read_pickle_dict(path, name, exp)
    if "data" not in d or label_key not in d:
        raise DataError(f"{path}: CIFAR batch lacks key {'data' if 'data' not in d else label_key!r}")
    x, y = d["data"], np.asarray(d[label_key])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = getattr(x, "shape", type(x).__name__)
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {getattr(x, 'dtype', '')} {shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {label_key!r} must hold {len(x)} integer labels, got {y.dtype} {y.shape}")
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < n_labels:
        raise DataError(f"{path}: {label_key!r} has labels outside 0..{n_labels - 1}")
    if exp is not None:
        check_array(name or str(path), path, exp, x.shape, y)
    return x, y.astype(np.int64)


_NPZ_NAME = re.compile(r"task_?(\d+)\.npz")
NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def npz_files(root: Path) -> dict[int, Path]:
    """{task id: path} of the task<T>.npz / task_<T>.npz files in `root`."""
    files: dict[int, Path] = {}
    for path in sorted(root.iterdir()):
        m = _NPZ_NAME.fullmatch(path.name)
        if not m or not path.is_file():
            continue
        task = int(m.group(1))
        if task < 1:
            raise DataError(f"npz: {path} names task {task}; task ids must be positive")
        if task in files:
            raise DataError(f"npz: task {task} has two files, {files[task].name} and {path.name}; keep one")
        files[task] = path
    if not files:
        raise DataError(
            f"npz: no task files in {root}: expected task<T>.npz or task_<T>.npz (T = 1, 2, ...) holding "
            f"{', '.join(NPZ_REQUIRED)}"
        )
    return files


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one npz task file, checked for the required names (x_val/y_val optional, paired)."""
    arrays = read_npz(path)
    missing = [k for k in NPZ_REQUIRED if k not in arrays]
    if ("x_val" in arrays) != ("y_val" in arrays):
        missing.append("y_val" if "x_val" in arrays else "x_val")
    if missing:
        raise DataError(
            f"npz: {path} lacks array(s) {', '.join(missing)} (it has: {', '.join(sorted(arrays)) or 'none'})"
        )
    if arrays["x_train"].ndim < 2:
        raise DataError(f"npz: {path}: x_train must be (N, features...) but has shape {arrays['x_train'].shape}")
    return arrays
