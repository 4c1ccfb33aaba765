"""Validation of task arrays before training: shapes, sizes, finiteness, labels (integers or strings).

Everything a checkpoint could not store, or a network could not take, is refused here with a
DataError naming the task and the array, so nothing is trained that cannot be saved and read back.
"""

from __future__ import annotations

import math

import numpy as np

from wsncli.engine.limits import MAX_CLASSES, MAX_INPUT_DIM, MAX_INPUT_DIMS, MAX_INPUTS, MAX_LABEL_CHARS
from wsncli.errors import DataError

_INT64 = np.iinfo(np.int64)


def check_pair(where: str, xk: str, yk: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim < 2:
        raise DataError(f"{where}: {xk} must be (N, features...) but has shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{where}: {yk} must be one label per sample but has shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: {xk} has {len(x)} samples but {yk} has {len(y)} labels")


def check_sample_shape(where: str, shape: tuple[int, ...]) -> None:
    """A sample shape the checkpoint can hold: 1..3 dimensions of 1..65536, at most 2^24 values."""
    if not 1 <= len(shape) <= MAX_INPUT_DIMS:
        raise DataError(
            f"{where}: samples have shape {shape}; wsn takes 1 to {MAX_INPUT_DIMS} dimensions "
            "(features, or channels x height x width)"
        )
    if any(d < 1 for d in shape):
        raise DataError(f"{where}: samples have shape {shape}, which holds no features")
    if any(d > MAX_INPUT_DIM for d in shape):
        raise DataError(f"{where}: samples have shape {shape}; each dimension must be at most {MAX_INPUT_DIM}")
    if math.prod(shape) > MAX_INPUTS:
        raise DataError(
            f"{where}: samples of shape {shape} hold {math.prod(shape)} values, over the limit of {MAX_INPUTS}"
        )


def check_arrays(where: str, xtr, ytr, xte, yte, input_shape: tuple[int, ...] | None) -> None:
    check_pair(where, "x_train", "y_train", xtr, ytr)
    check_pair(where, "x_test", "y_test", xte, yte)
    if len(xtr) == 0 or len(xte) == 0:
        raise DataError(f"{where}: the {'train' if len(xtr) == 0 else 'test'} set is empty")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{where}: train samples have shape {xtr.shape[1:]} but test samples {xte.shape[1:]}")
    check_sample_shape(where, tuple(int(d) for d in xtr.shape[1:]))
    if input_shape is not None and tuple(xtr.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{where}: samples have shape {xtr.shape[1:]} but the benchmark's input shape is {tuple(input_shape)}"
        )


def check_finite(where: str, key: str, x: np.ndarray) -> None:
    if x.dtype.kind not in "fc" or np.isfinite(x).all():
        return
    n_nan = int(np.isnan(x).sum())
    n_inf = int(np.isinf(x).sum())
    kinds = [f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else ""]
    raise DataError(f"{where}: {key} contains {' and '.join(k for k in kinds if k)} values")


def check_fits_float32(where: str, key: str, x: np.ndarray) -> None:
    """Float inputs wider than float32 must fit it: cast, they would become infinite (refused here,
    before any arithmetic prints numpy's overflow warnings)."""
    if x.dtype.kind != "f" or x.dtype.itemsize <= 4 or not x.size:
        return
    largest = float(np.abs(x).max())
    if largest > float(np.finfo(np.float32).max):
        raise DataError(
            f"{where}: {key} holds values up to {largest:.3g}, beyond float32's range (±3.4e+38); "
            "rescale the data before training"
        )


def label_values(where: str, key: str, y: np.ndarray) -> np.ndarray:
    """Labels as int64 or str: integers that fit 64 bits, or strings (npz 'U'/'S' arrays)."""
    if y.dtype.kind in "iu":
        if y.size and y.dtype.kind == "u" and int(y.max()) > _INT64.max:
            raise DataError(f"{where}: {key} holds {int(y.max())}, over the 64-bit integer range")
        return y.astype(np.int64)
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: {key} holds byte strings that are not UTF-8") from None
    if y.dtype.kind == "U":
        if y.size and int(np.char.str_len(y).max()) > MAX_LABEL_CHARS:
            raise DataError(f"{where}: {key} has a label longer than {MAX_LABEL_CHARS} characters")
        return y.astype(str)
    raise DataError(f"{where}: {key} has dtype {y.dtype}; labels must be integers or strings")


def task_classes(where: str, y_train: np.ndarray) -> tuple:
    """The task's classes, sorted: the distinct training labels (bounded by MAX_CLASSES)."""
    classes = np.unique(y_train)
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{where}: {len(classes)} classes, over the limit of {MAX_CLASSES}")
    if y_train.dtype.kind == "U":
        return tuple(str(c) for c in classes)
    return tuple(int(c) for c in classes)


def check_labels(where: str, classes: tuple, y: np.ndarray, split: str) -> None:
    known = np.asarray(classes, dtype=y.dtype) if classes else np.zeros(0, y.dtype)
    if (y.dtype.kind == "U") != (known.dtype.kind == "U"):
        raise DataError(
            f"{where}: {split} labels are {'strings' if y.dtype.kind == 'U' else 'integers'} but the task's "
            "classes are not"
        )
    bad = np.setdiff1d(np.unique(y), known)
    if len(bad):
        shown = ", ".join(map(str, bad[:5].tolist())) + (", ..." if len(bad) > 5 else "")
        raise DataError(f"{where}: {split} labels {{{shown}}} are not among the task's classes {list(classes)[:20]}")


def to_indices(classes: tuple, y: np.ndarray) -> np.ndarray:
    """Original labels -> head indices 0..K-1 (classes sorted, so a binary search maps them)."""
    return np.searchsorted(np.asarray(classes, dtype=y.dtype), y).astype(np.int64)
