"""Task data for wsn: the benchmark registry, loading, deterministic splits and validation.

Every benchmark is a sequence of tasks with positive ids. `load_task` returns one task's train,
validation and test splits (raw arrays plus the transform that makes them network inputs), checked,
with labels mapped to 0..K-1 (head label i is the task's i-th smallest original class). Test and
validation splits use seeds derived from the benchmark and task id only, never from a training
seed, so every run sees the same held-out data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from wsncli.engine.data import loaders, multi
from wsncli.engine.data import readers as ds
from wsncli.engine.data.checks import (
    check_arrays,
    check_finite,
    check_fits_float32,
    check_labels,
    check_pair,
    task_classes,
    to_indices,
)
from wsncli.engine.data.loaders import CIFAR10_FILES, CIFAR100_FILES, DEBIAN_FASHION, MNIST_FILES, resolve_data_root  # noqa: F401
from wsncli.engine.data.preprocess import Preprocess, standardize
from wsncli.engine.data.splits import pmnist_permutation, split_seed, stratified_split, stratified_subset  # noqa: F401
from wsncli.engine.limits import BENCHMARKS
from wsncli.errors import DataError, FieldError, UsageError

_MAX_PMNIST_TASKS = 1000


@dataclass(frozen=True)
class DataOptions:
    """Data settings of a checkpoint (shape-defining: they must match on every later task)."""

    image_size: int | None = None  # image-folder / tinyimagenet: resize; mnist-style: pad to this
    channels: int | None = None  # image-folder: 1 or 3 (default: 1 when every image is grayscale)
    n_tasks: int | None = None
    train_limit: int | None = None  # train on a fixed stratified subset of this many (not stored)
    on_progress: Callable[[int, int], None] | None = None  # decoding images (not stored)


@dataclass(frozen=True, eq=False)
class TaskData:
    """One task's splits: raw inputs (uint8 or float), labels int64 in [0, n_classes), the transform.

    `x_train`, `x_val`, `x_test` are the network's float32 inputs (the transform applied, made once
    on first use); `raw_*` are the arrays as loaded."""

    benchmark: str
    task: int
    classes: tuple  # original labels (int or str), sorted; head label i == classes[i]
    raw_train: np.ndarray
    y_train: np.ndarray
    raw_val: np.ndarray
    y_val: np.ndarray
    raw_test: np.ndarray
    y_test: np.ndarray
    prep: Preprocess

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.raw_train.shape[1:])

    @cached_property
    def x_train(self) -> np.ndarray:
        return self.prep.apply(self.raw_train)

    @cached_property
    def x_val(self) -> np.ndarray:
        return self.prep.apply(self.raw_val)

    @cached_property
    def x_test(self) -> np.ndarray:
        return self.prep.apply(self.raw_test)

    def with_prep(self, prep: Preprocess) -> TaskData:
        """The same data under another transform (eval and predict use the one stored at learning)."""
        return replace(self, prep=prep)

    def digest(self) -> str:
        """sha256 hex of the test inputs (transformed, float32) and labels (shapes and dtypes included)."""
        h = hashlib.sha256()
        for arr in (self.x_test, self.y_test):
            arr = np.ascontiguousarray(arr)
            h.update(f"{arr.dtype.str}{arr.shape};".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a benchmark is: its task ids, input shape (None: set by the data) and training defaults."""

    name: str
    n_tasks: int
    task_ids: tuple[int, ...]
    input_shape: tuple[int, ...] | None
    default_arch: str
    default_epochs: int
    default_batch_size: int
    val_fraction: float
    standardize: bool  # default of --standardize for its tasks
    default_bias: bool = False  # default of --bias for a new checkpoint


@dataclass(frozen=True)
class _Spec:
    n_tasks: int
    classes_per_task: int  # 0: every task has all classes (pmnist); -1: set by the files
    input_shape: tuple[int, ...] | None
    arch: str
    epochs: int
    batch: int
    val: float
    standardize: bool = False
    bias: bool = False


_SPECS: dict[str, _Spec] = {
    "split-digits": _Spec(5, 2, (64,), "mlp", 20, 32, 0.1),
    "pmnist": _Spec(10, 0, (784,), "mlp", 5, 10, 0.1),
    "split-mnist": _Spec(5, 2, (1, 28, 28), "mlp", 5, 32, 0.1),
    "split-fashion": _Spec(5, 2, (1, 28, 28), "mlp", 5, 32, 0.1),
    "split-cifar10": _Spec(5, 2, (3, 32, 32), "conv", 50, 64, 0.05),
    "split-cifar100": _Spec(10, 10, (3, 32, 32), "conv", 50, 64, 0.05),
    "split-tinyimagenet": _Spec(40, -1, None, "conv4", 50, 64, 0.05),
    "multi-dataset": _Spec(4, 0, (1, 28, 28), "resnet18", 5, 64, 0.05, standardize=True),
    "npz": _Spec(0, -1, None, "mlp", 100, 16, 0.1, standardize=True, bias=True),  # tabular: RESULTS.md section 7
    "image-folder": _Spec(0, -1, None, "resnet18", 20, 64, 0.05, standardize=True),
}
_RAW = {
    "split-digits": loaders.digits,
    "pmnist": partial(loaders.mnist_like, "pmnist"),
    "split-mnist": partial(loaders.mnist_like, "split-mnist"),
    "split-fashion": partial(loaders.mnist_like, "split-fashion"),
    "split-cifar10": partial(loaders.cifar, "split-cifar10"),
    "split-cifar100": partial(loaders.cifar, "split-cifar100"),
    "split-tinyimagenet": loaders.tinyimagenet,
    "multi-dataset": multi.task_raw,
    "npz": loaders.npz,
    "image-folder": loaders.image_folder,
}


IMAGE_SIZE_BENCHMARKS = ("split-mnist", "split-fashion", "image-folder", "split-tinyimagenet", "multi-dataset")
CHANNELS_BENCHMARKS = ("image-folder", "split-tinyimagenet")  # --channels


def check_options_apply(name: str, options: DataOptions) -> None:
    """Refuse image options for a benchmark that would ignore them (UsageError: exit 2)."""
    for flag, value, names in (
        ("--image-size", options.image_size, IMAGE_SIZE_BENCHMARKS),
        ("--channels", options.channels, CHANNELS_BENCHMARKS),
    ):
        if value is not None and name not in names:
            raise UsageError(f"{flag} applies to benchmark {', '.join(names)} only, not {name}")


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise DataError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
    return _SPECS[name]


def benchmark_info(
    name: str, data_root: Path | None = None, n_tasks: int | None = None, options: DataOptions | None = None
) -> BenchmarkInfo:
    """The benchmark's task ids, input shape and defaults (lists folders only for npz/image-folder)."""
    spec = _spec(name)
    shape = spec.input_shape
    if name == "npz":
        ids = tuple(sorted(ds.npz_files(loaders.require_root(name, data_root, "task<T>.npz files"))))
        ids = ids[: _check_n_tasks(name, n_tasks, len(ids))] if n_tasks is not None else ids
    elif name == "image-folder":
        from wsncli.engine.data import images

        ids = images.image_folder_tasks(loaders.require_root(name, data_root, "task<T>/ image folders"))
        ids = ids[: _check_n_tasks(name, n_tasks, len(ids))] if n_tasks is not None else ids
    else:
        most = _MAX_PMNIST_TASKS if name == "pmnist" else 200 if name == "split-tinyimagenet" else spec.n_tasks
        count = spec.n_tasks if n_tasks is None else _check_n_tasks(name, n_tasks, most)
        ids = tuple(range(1, count + 1))
        size = options.image_size if options else None
        if size is not None and shape is not None and len(shape) == 3:
            shape = (shape[0], size, size)
    return BenchmarkInfo(
        name, len(ids), ids, shape, spec.arch, spec.epochs, spec.batch, spec.val, spec.standardize, spec.bias
    )


def load_task(
    name: str,
    task: int,
    data_root: Path | None = None,
    n_tasks: int | None = None,
    options: DataOptions | None = None,
    standardize_inputs: bool | None = None,
) -> TaskData:
    """One task of a benchmark, split and validated; raises DataError on any problem.

    `standardize_inputs` (default: the benchmark's) measures a per-feature (per-channel for images)
    mean and std on the training split and folds them into the transform."""
    options = replace(options or DataOptions(), n_tasks=n_tasks)
    info = benchmark_info(name, data_root, n_tasks, options)
    if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or int(task) not in info.task_ids:
        raise DataError(f"{name} has no task {task!r}: its tasks are {_ids_text(info.task_ids)}")
    task = int(task)
    spec = _SPECS[name]
    fixed = None if spec.classes_per_task < 0 else _fixed_classes(spec, task)
    raw = _RAW[name](data_root, task, fixed, options)
    where = raw.where
    check_arrays(where, raw.x_train, raw.y_train, raw.x_test, raw.y_test, info.input_shape)
    classes = raw.classes if raw.classes is not None else task_classes(where, raw.y_train)
    check_labels(where, classes, raw.y_train, "train")
    check_labels(where, classes, raw.y_test, "test")
    missing = sorted(set(classes) - set(np.unique(raw.y_train).tolist()))
    if missing:
        raise DataError(f"{where}: classes {missing[:10]} have no training examples")
    ytr, yte = to_indices(classes, raw.y_train), to_indices(classes, raw.y_test)
    xtr = raw.x_train
    if raw.val is None:
        keep, held = stratified_split(ytr, info.val_fraction, split_seed(name, task, "val"))
        xva, yva, xtr, ytr = xtr[held], ytr[held], xtr[keep], ytr[keep]
    else:
        xva, yva_raw = raw.val
        check_pair(where, "x_val", "y_val", xva, yva_raw)
        if xva.shape[1:] != xtr.shape[1:]:
            raise DataError(f"{where}: x_val samples have shape {xva.shape[1:]} but x_train samples {xtr.shape[1:]}")
        check_labels(where, classes, yva_raw, "val")
        yva = to_indices(classes, yva_raw)
    if options.train_limit is not None and options.train_limit < len(ytr):
        sub = stratified_subset(ytr, options.train_limit, split_seed(name, task, "train-limit"))
        xtr, ytr = xtr[sub], ytr[sub]
    for label, arr in (("x_train", xtr), ("x_test", raw.x_test), ("x_val", xva)):
        check_finite(where, label, arr)
        check_fits_float32(where, label, arr)
    prep = raw.prep
    if standardize_inputs if standardize_inputs is not None else info.standardize:
        prep = standardize(prep, xtr, raw.per_channel)
    data = TaskData(name, task, tuple(classes), xtr, ytr, xva, yva, raw.x_test, yte, prep)
    if raw.x_train.dtype.kind == "f" or raw.x_train.dtype.itemsize > 2:  # e.g. float64 beyond float32's range
        for label in ("x_train", "x_test"):
            check_finite(where, f"{label} (as float32, transformed)", getattr(data, label))
    return data


def _check_n_tasks(name: str, n_tasks: int, most: int) -> int:
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, (int, np.integer)) or not 1 <= n_tasks <= most:
        raise FieldError("n_tasks", f"must be an integer from 1 to {most} for {name}, got {n_tasks!r}")
    return int(n_tasks)


def _ids_text(ids: tuple[int, ...]) -> str:
    if ids == tuple(range(1, len(ids) + 1)):
        return f"1..{len(ids)}"
    return ", ".join(map(str, ids))


def _fixed_classes(spec: _Spec, task: int) -> tuple[int, ...]:
    k = spec.classes_per_task
    return tuple(range(10)) if k == 0 else tuple(range(k * (task - 1), k * task))
