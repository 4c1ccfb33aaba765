"""`multi-dataset`: one task per dataset, four domains of 10 classes each, in a fixed order.

    task 1  MNIST          DIR/mnist/          60,000 train / 10,000 test
    task 2  Fashion-MNIST  DIR/fashion-mnist/  (or the Debian folder) 60,000 / 10,000
    task 3  Animal-MNIST   DIR/animal-mnist/   one set of 10,000, split here 8,000 / 2,000
    task 4  UCI digits     bundled with wsn    1,797 8x8 digits, upsampled to MNIST's layout

Every file is checked against its pinned digest and counts (data.pinned) before use. Animal-MNIST and
the digits ship one set each: a fixed 20% per class is held out as the test set (seeded by benchmark
and task, never by a training seed), with exact duplicate images kept on one side of the split. The
digits are upsampled bilinearly from 8x8 to 20x20 and centred in 28x28, as MNIST centres its digits
in a 20x20 box; their 0..16 values are scaled to 0..255. Images are 1x28x28 uint8 (--image-size pads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsncli.engine.data import readers as ds
from wsncli.engine.data.loaders import DEBIAN_FASHION, MNIST_FILES, RawTask, pad_images, resolve_data_root
from wsncli.engine.data.pinned import expected
from wsncli.engine.data.preprocess import scaled
from wsncli.engine.data.splits import grouped_stratified_split, split_seed
from wsncli.errors import DataError

NAME = "multi-dataset"
DATASETS = ("MNIST", "Fashion-MNIST", "Animal-MNIST", "UCI digits")
FOLDERS = ("mnist", "fashion-mnist", "animal-mnist", None)
ANIMAL_FILES = ("animal-images-idx3-ubyte", "animal-labels-idx1-ubyte")
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
TEST_FRACTION = 0.2  # of Animal-MNIST and the digits, which ship no test set
DIGIT_BOX, SIDE = 20, 28


def task_raw(root, task: int, classes: tuple[int, ...], options) -> RawTask:
    """Task `task`'s arrays as stored: uint8 (N, 1, 28, 28) images (padded to --image-size), labels 0..9."""
    where = f"{NAME} task {task} ({DATASETS[task - 1]})"
    if task in (1, 2):
        sub = FOLDERS[task - 1]
        found = _locate(root, sub, MNIST_FILES, DEBIAN_FASHION if task == 2 else None)
        (xtr, ytr), (xte, yte) = ds.mnist_arrays(NAME, found, sub)
    else:
        x, y = _animal(root) if task == 3 else _digits()
        keep, held = grouped_stratified_split(y, x, TEST_FRACTION, split_seed(NAME, task, "test"))
        (xtr, ytr), (xte, yte) = (x[keep], y[keep]), (x[held], y[held])
    size = getattr(options, "image_size", None)
    xtr, xte = pad_images(xtr[:, None], size), pad_images(xte[:, None], size)  # (N, 1, S, S)
    return RawTask(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), scaled(1 / 255.0), where, classes, None, True)


def _locate(root, sub: str, files: tuple[str, ...], fallback: Path | None) -> dict[str, Path]:
    """`DIR/<sub>/` only (never DIR/ itself, which may hold another dataset's files of the same names)."""
    root = resolve_data_root(root)
    if root is not None and not root.is_dir():
        raise DataError(f"{NAME}: data root {root} is not a folder (from --data-root or WSN_DATA_ROOT)")
    folders = ([root / sub] if root is not None else []) + ([fallback] if fallback and fallback.is_dir() else [])
    what = f"{sub} IDX files"
    return ds.locate(NAME, what, folders, files, True, root, sub)


def _animal(root) -> tuple[np.ndarray, np.ndarray]:
    """Animal-MNIST's one set: (10000, 28, 28) uint8 silhouettes, labels 0..9 (ANIMAL_CLASSES)."""
    found = _locate(root, "animal-mnist", ANIMAL_FILES, None)
    x, y = (ds.read_idx(found[n], NAME, expected(f"animal-mnist/{n}")) for n in ANIMAL_FILES)
    ds.check_image_labels(NAME, found[ANIMAL_FILES[0]], found[ANIMAL_FILES[1]], x, y)
    return x, y


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits as (1797, 28, 28) uint8 in MNIST's layout."""
    x, y = ds.digits_arrays()
    return upsample_digits(x.reshape(-1, 8, 8)), y


def upsample_digits(x: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 28, 28) uint8: bilinear to 20x20 (pixel centres aligned, edges
    clamped), scaled to 0..255, centred with a 4-pixel zero border."""
    n_in = x.shape[-1]
    src = np.clip((np.arange(DIGIT_BOX) + 0.5) * n_in / DIGIT_BOX - 0.5, 0, n_in - 1)  # (20,) source coords
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    weights = np.zeros((DIGIT_BOX, n_in))  # (20, 8) interpolation matrix
    np.add.at(weights, (np.arange(DIGIT_BOX), lo), 1 - (src - lo))
    np.add.at(weights, (np.arange(DIGIT_BOX), hi), src - lo)
    up = np.einsum("ik,nkl,jl->nij", weights, x.astype(np.float64), weights)  # (N, 20, 20) in 0..16
    out = np.zeros((len(x), SIDE, SIDE), np.uint8)
    border = (SIDE - DIGIT_BOX) // 2
    out[:, border : border + DIGIT_BOX, border : border + DIGIT_BOX] = np.clip(np.rint(up * 255 / 16), 0, 255)
    return out
