"""Task data for wsn: the benchmark registry, loading, deterministic splits and validation.

Every benchmark is a sequence of tasks with positive ids. `load_task` returns one task's train,
validation and test arrays, already normalised and checked, with labels mapped to 0..K-1 (head label
i is the task's i-th smallest original class). Test and validation splits use seeds derived from the
benchmark and task id only, never from a training seed, so every run sees the same held-out data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from wsncli.engine.data import readers as ds
from wsncli.errors import DataError

BENCHMARKS: tuple[str, ...] = (
    "split-digits", "pmnist", "split-mnist", "split-fashion", "split-cifar10", "split-cifar100", "npz",
)

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
CIFAR100_FILES = ("train", "test")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist

# (mean, std) of pixel/255: MNIST per the paper; Fashion-MNIST measured on its 60k training images;
# CIFAR per channel (R, G, B), the usual constants of the training sets.
_MNIST_NORM = (0.1307, 0.3081)
_FASHION_NORM = (0.2860, 0.3530)
_CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_DIGITS_TEST_FRACTION = 0.2
_MAX_PMNIST_TASKS = 1000


@dataclass(frozen=True, eq=False)
class TaskData:
    """One task's arrays: inputs float32 (N, *input_shape), labels int64 in [0, n_classes)."""

    benchmark: str
    task: int
    classes: tuple[int, ...]  # original labels, sorted; head label i == classes[i]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def digest(self) -> str:
        """sha256 hex of the test inputs and labels (shapes and dtypes included)."""
        h = hashlib.sha256()
        for arr in (self.x_test, self.y_test):
            arr = np.ascontiguousarray(arr)
            h.update(f"{arr.dtype.str}{arr.shape};".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a benchmark is: its task ids, input shape and training defaults."""

    name: str
    n_tasks: int
    task_ids: tuple[int, ...]
    input_shape: tuple[int, ...]
    default_arch: str  # "mlp" or "conv"
    default_epochs: int
    default_batch_size: int
    val_fraction: float


@dataclass(frozen=True)
class _Spec:
    n_tasks: int
    classes_per_task: int  # 0: every task has all classes (pmnist)
    input_shape: tuple[int, ...]
    arch: str
    epochs: int
    batch: int
    val: float


_SPECS: dict[str, _Spec] = {
    "split-digits": _Spec(5, 2, (64,), "mlp", 20, 32, 0.1),
    "pmnist": _Spec(10, 0, (784,), "mlp", 5, 10, 0.1),
    "split-mnist": _Spec(5, 2, (1, 28, 28), "mlp", 5, 32, 0.1),
    "split-fashion": _Spec(5, 2, (1, 28, 28), "mlp", 5, 32, 0.1),
    "split-cifar10": _Spec(5, 2, (3, 32, 32), "conv", 50, 64, 0.05),
    "split-cifar100": _Spec(10, 10, (3, 32, 32), "conv", 50, 64, 0.05),
    "npz": _Spec(0, 0, (), "mlp", 10, 32, 0.1),
}


def resolve_data_root(data_root: Path | None) -> Path | None:
    """`--data-root` when given, else $WSN_DATA_ROOT when set, else None."""
    if data_root is not None:
        return Path(data_root).expanduser()
    return ds.env_data_root()


def benchmark_info(name: str, data_root: Path | None = None, n_tasks: int | None = None) -> BenchmarkInfo:
    """The benchmark's task ids, input shape and defaults (reads files only for `npz`)."""
    spec = _spec(name)
    if name == "npz":
        files = ds.npz_files(_require_root(name, data_root))
        ids = tuple(sorted(files))
        if n_tasks is not None:
            ids = ids[: _check_n_tasks(name, n_tasks, len(ids))]
        first = ds.npz_arrays(files[ids[0]])["x_train"]
        shape = tuple(int(d) for d in first.shape[1:])
    else:
        if name == "pmnist":
            count = spec.n_tasks if n_tasks is None else _check_n_tasks(name, n_tasks, _MAX_PMNIST_TASKS)
        else:
            count = spec.n_tasks if n_tasks is None else _check_n_tasks(name, n_tasks, spec.n_tasks)
        ids, shape = tuple(range(1, count + 1)), spec.input_shape
    return BenchmarkInfo(name, len(ids), ids, shape, spec.arch, spec.epochs, spec.batch, spec.val)


def load_task(name: str, task: int, data_root: Path | None = None, n_tasks: int | None = None) -> TaskData:
    """One task of a benchmark, normalised, split and validated; raises DataError on any problem."""
    info = benchmark_info(name, data_root, n_tasks)
    if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or int(task) not in info.task_ids:
        raise DataError(f"{name} has no task {task!r}: its tasks are {_ids_text(info.task_ids)}")
    task = int(task)
    where = f"{name} task {task}"
    val = None
    if name == "npz":
        xtr, ytr, xte, yte, val, classes, where = _raw_npz(data_root, task)
    else:
        classes = _task_classes(name, task)
        xtr, ytr, xte, yte = _RAW[name](data_root, task, classes)
    _check_arrays(where, info.input_shape, xtr, ytr, xte, yte)
    _check_labels(where, classes, ytr, "train")
    _check_labels(where, classes, yte, "test")
    missing = sorted(set(classes) - set(np.unique(ytr).tolist()))
    if missing:
        raise DataError(f"{where}: classes {missing} have no training examples")
    for label, arr in (("x_train", xtr), ("x_test", xte)) + ((("x_val", val[0]),) if val else ()):
        _check_finite(where, label, arr)
    cls = np.asarray(classes, dtype=np.int64)
    ytr, yte = np.searchsorted(cls, ytr).astype(np.int64), np.searchsorted(cls, yte).astype(np.int64)
    if val is None:
        keep, held = stratified_split(ytr, info.val_fraction, split_seed(name, task, "val"))
        xva, yva, xtr, ytr = xtr[held], ytr[held], xtr[keep], ytr[keep]
    else:
        xva, yva = val
        _check_pair(where, "x_val", "y_val", xva, yva)
        if xva.shape[1:] != xtr.shape[1:]:
            raise DataError(f"{where}: x_val samples have shape {xva.shape[1:]} but x_train samples {xtr.shape[1:]}")
        _check_labels(where, classes, yva, "val")
        yva = np.searchsorted(cls, yva).astype(np.int64)
    return TaskData(name, task, tuple(classes), xtr, ytr, xva, yva, xte, yte)


# ---- splits -------------------------------------------------------------------------------------


def split_seed(benchmark: str, task: int, purpose: str) -> int:
    """A fixed 64-bit seed from (benchmark, task id, purpose); never depends on a training seed."""
    digest = hashlib.sha256(f"wsn:{benchmark}:{task}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) sorted index arrays; each class holds out round(fraction*n) but keeps >= 1."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = min(int(np.floor(fraction * len(idx) + 0.5)), len(idx) - 1)
        if n > 0:
            held.append(rng.permutation(idx)[:n])
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def pmnist_permutation(task: int, size: int = 784) -> np.ndarray:
    """Task `task`'s fixed pixel permutation: numpy default_rng(task).permutation(size)."""
    return np.random.default_rng(task).permutation(size)


# ---- per-benchmark raw loaders: (x_train, y_train, x_test, y_test), x normalised, y original --------


def _raw_digits(_root, task, classes):
    x, y = ds.digits_arrays()
    sel = np.flatnonzero(np.isin(y, classes))
    x, y = (x[sel] / 16.0).astype(np.float32), y[sel]
    keep, held = stratified_split(y, _DIGITS_TEST_FRACTION, split_seed("split-digits", task, "test"))
    return x[keep], y[keep], x[held], y[held]


def _raw_mnist_like(name, root, task, classes):
    fashion = name == "split-fashion"
    sub, fallback = ("fashion-mnist", DEBIAN_FASHION) if fashion else ("mnist", None)
    what = "Fashion-MNIST IDX files" if fashion else "MNIST IDX files"
    found = ds.locate(name, what, _candidates(name, root, sub, fallback), MNIST_FILES, True, resolve_data_root(root), sub)
    (xtr, ytr), (xte, yte) = ds.mnist_arrays(name, found)
    mean, std = _FASHION_NORM if fashion else _MNIST_NORM
    if name == "pmnist":
        perm = pmnist_permutation(task)
        xtr, xte = (x.reshape(len(x), -1)[:, perm] for x in (xtr, xte))  # (N, 784), permuted
    else:
        (xtr, ytr), (xte, yte) = _select(xtr, ytr, classes), _select(xte, yte, classes)
        xtr, xte = xtr[:, None], xte[:, None]  # (N, 1, 28, 28)
    return _normalise(xtr, mean, std), ytr, _normalise(xte, mean, std), yte


def _raw_cifar(name, root, task, classes):
    hundred = name == "split-cifar100"
    folder_name, files = ("cifar-100-python", CIFAR100_FILES) if hundred else ("cifar-10-batches-py", CIFAR10_FILES)
    cands = _candidates(name, root, folder_name)
    found = ds.locate(name, "CIFAR python-pickle batches", cands, files, False, resolve_data_root(root), folder_name)
    label_key, n_labels = ("fine_labels", 100) if hundred else ("labels", 10)
    parts = [ds.cifar_batch(found[f], label_key, n_labels) for f in files]
    train, test = parts[:-1], parts[-1]
    xtr, ytr = np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train])
    (xtr, ytr), (xte, yte) = _select(xtr, ytr, classes), _select(*test, classes)
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (_CIFAR100_NORM if hundred else _CIFAR10_NORM))
    xtr, xte = (x.reshape(len(x), 3, 32, 32) for x in (xtr, xte))  # (N, C, H, W), channel-major rows
    return _normalise(xtr, mean, std), ytr, _normalise(xte, mean, std), yte


_RAW = {
    "split-digits": _raw_digits,
    "pmnist": partial(_raw_mnist_like, "pmnist"),
    "split-mnist": partial(_raw_mnist_like, "split-mnist"),
    "split-fashion": partial(_raw_mnist_like, "split-fashion"),
    "split-cifar10": partial(_raw_cifar, "split-cifar10"),
    "split-cifar100": partial(_raw_cifar, "split-cifar100"),
}


def _raw_npz(root, task):
    path = ds.npz_files(_require_root("npz", root))[task]
    arrays, where = ds.npz_arrays(path), f"npz task {task} ({path})"
    for key in ("y_train", "y_test", "y_val"):
        if key in arrays and not np.issubdtype(arrays[key].dtype, np.integer):
            raise DataError(f"{where}: {key} has dtype {arrays[key].dtype}; labels must be integers")
    xtr, ytr, xte, yte = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    _check_pair(where, "x_train", "y_train", xtr, ytr)
    classes = tuple(int(c) for c in np.unique(ytr))
    val = (ds.npz_inputs(where, "x_val", arrays["x_val"]), arrays["y_val"].astype(np.int64)) if "x_val" in arrays else None
    x_train, x_test = ds.npz_inputs(where, "x_train", xtr), ds.npz_inputs(where, "x_test", xte)
    return x_train, ytr.astype(np.int64), x_test, yte.astype(np.int64), val, classes, where


# ---- helpers ------------------------------------------------------------------------------------


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise DataError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
    return _SPECS[name]


def _check_n_tasks(name: str, n_tasks: int, most: int) -> int:
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, (int, np.integer)) or not 1 <= n_tasks <= most:
        raise DataError(f"{name}: n_tasks must be an integer from 1 to {most}, got {n_tasks!r}")
    return int(n_tasks)


def _ids_text(ids: tuple[int, ...]) -> str:
    if ids == tuple(range(1, len(ids) + 1)):
        return f"1..{len(ids)}"
    return ", ".join(map(str, ids))


def _task_classes(name: str, task: int) -> tuple[int, ...]:
    k = _SPECS[name].classes_per_task
    return tuple(range(10)) if k == 0 else tuple(range(k * (task - 1), k * task))


def _require_root(name: str, data_root: Path | None) -> Path:
    root = resolve_data_root(data_root)
    if root is None:
        raise DataError(f"{name} needs a folder of task<T>.npz files: pass --data-root DIR or set WSN_DATA_ROOT=DIR")
    if not root.is_dir():
        raise DataError(f"{name}: data root {root} is not a folder (from --data-root or WSN_DATA_ROOT)")
    return root


def _candidates(name: str, data_root: Path | None, sub: str, fallback: Path | None = None) -> list[Path]:
    root = resolve_data_root(data_root)
    if root is not None and not root.is_dir():
        raise DataError(f"{name}: data root {root} is not a folder (from --data-root or WSN_DATA_ROOT)")
    folders = [root / sub, root] if root is not None else []
    return folders + ([fallback] if fallback is not None and fallback.is_dir() else [])


def _select(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    sel = np.flatnonzero(np.isin(y, classes))
    return x[sel], y[sel].astype(np.int64)


def _normalise(x: np.ndarray, mean, std) -> np.ndarray:
    """(x / 255 - mean) / std as a new float32 array; mean and std broadcast (scalars or per channel)."""
    out = x.astype(np.float32)
    out *= np.float32(1 / 255.0)
    out -= np.asarray(mean, dtype=np.float32)
    out /= np.asarray(std, dtype=np.float32)
    return out


def _check_pair(where: str, xk: str, yk: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim < 2:
        raise DataError(f"{where}: {xk} must be (N, features...) but has shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{where}: {yk} must be one label per sample but has shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: {xk} has {len(x)} samples but {yk} has {len(y)} labels")


def _check_arrays(where, input_shape, xtr, ytr, xte, yte) -> None:
    _check_pair(where, "x_train", "y_train", xtr, ytr)
    _check_pair(where, "x_test", "y_test", xte, yte)
    if len(xtr) == 0 or len(xte) == 0:
        raise DataError(f"{where}: the {'train' if len(xtr) == 0 else 'test'} set is empty")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{where}: train samples have shape {xtr.shape[1:]} but test samples {xte.shape[1:]}")
    if tuple(xtr.shape[1:]) != tuple(input_shape):
        raise DataError(f"{where}: samples have shape {xtr.shape[1:]} but the benchmark's input shape is {tuple(input_shape)}")


def _check_labels(where: str, classes: tuple[int, ...], y: np.ndarray, split: str) -> None:
    bad = np.setdiff1d(np.unique(y), np.asarray(classes, dtype=np.int64))
    if len(bad):
        shown = ", ".join(map(str, bad[:5].tolist())) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{where}: {split} labels {{{shown}}} are not among the task's classes {list(classes)}")


def _check_finite(where: str, key: str, x: np.ndarray) -> None:
    if np.isfinite(x).all():
        return
    n_nan = int(np.isnan(x).sum())
    n_inf = int(np.isinf(x).sum())
    kinds = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else ""]
    raise DataError(f"{where}: {key} contains {' and '.join(k for k in kinds if k)} values")
