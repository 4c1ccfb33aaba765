"""Per-benchmark raw loaders: one task's arrays as stored (uint8 pixels, raw features, original
labels) and the fixed transform that makes them network inputs (data.preprocess)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsncli.engine.data import readers as ds
from wsncli.engine.data.checks import check_pair, label_values
from wsncli.engine.data.pinned import CHECKSUMS_ENV, TINYIMAGENET_COUNTS, TINYIMAGENET_KEY, expected
from wsncli.engine.data.preprocess import Preprocess, scaled
from wsncli.engine.data.splits import pmnist_permutation, split_seed, stratified_split
from wsncli.errors import DataError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
CIFAR100_FILES = ("train", "test")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist

# (mean, std) of pixel/255: MNIST per the paper; Fashion-MNIST measured on its 60k training images;
# CIFAR per channel (R, G, B), the usual constants of the training sets.
MNIST_NORM = (0.1307, 0.3081)
FASHION_NORM = (0.2860, 0.3530)
CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True, eq=False)
class RawTask:
    """One task as stored: raw inputs, original labels (int64 or str), and its fixed transform."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    prep: Preprocess
    where: str
    classes: tuple | None = None  # fixed by the benchmark; None: the distinct training labels
    val: tuple[np.ndarray, np.ndarray] | None = None  # given validation split (npz), else split off train
    per_channel: bool = False  # standardisation per channel (images) rather than per feature


def _select(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    sel = np.flatnonzero(np.isin(y, classes))
    return x[sel], y[sel].astype(np.int64)


NAME_MAX, ROOT_MAX = 255, 3584  # bytes of one path component; of a data root (PATH_MAX 4096 less room for names below)


def resolve_data_root(data_root: Path | None) -> Path | None:
    """`--data-root` when given, else $WSN_DATA_ROOT when set, else None; a path no file system can
    open (a component over 255 bytes, or too long as a whole) is a DataError, not an OSError later."""
    root = Path(data_root).expanduser() if data_root is not None else ds.env_data_root()
    if root is not None:
        raw = os.fsencode(root)
        longest = max((len(part) for part in raw.split(b"/")), default=0)
        if longest > NAME_MAX or len(raw) > ROOT_MAX:
            what = f"a component of {longest} bytes" if longest > NAME_MAX else f"{len(raw)} bytes"
            raise DataError(
                f"data root {str(root)[:60] + ('...' if len(str(root)) > 60 else '')} has {what}, over the limit of "
                f"{NAME_MAX if longest > NAME_MAX else ROOT_MAX} (from --data-root, WSN_DATA_ROOT or the checkpoint)"
            )
    return root


def require_root(name: str, data_root: Path | None, what: str) -> Path:
    root = resolve_data_root(data_root)
    if root is None:
        raise DataError(f"{name} needs a folder of {what}: pass --data-root DIR or set WSN_DATA_ROOT=DIR")
    if not root.is_dir():
        raise DataError(f"{name}: data root {root} is not a folder (from --data-root or WSN_DATA_ROOT)")
    return root


def candidates(name: str, data_root: Path | None, sub: str, fallback: Path | None = None) -> list[Path]:
    root = resolve_data_root(data_root)
    if root is not None and not root.is_dir():
        raise DataError(f"{name}: data root {root} is not a folder (from --data-root or WSN_DATA_ROOT)")
    folders = [root / sub, root] if root is not None else []
    return folders + ([fallback] if fallback is not None and fallback.is_dir() else [])


def pad_images(x: np.ndarray, size: int | None) -> np.ndarray:
    """(N, C, h, w) -> (N, C, size, size), zero-padded evenly (28x28 MNIST -> 32x32 for the ResNet)."""
    if size is None or size == x.shape[-1]:
        return x
    h, w = x.shape[-2:]
    if size < max(h, w):
        raise DataError(
            f"--image-size {size} is smaller than the {h}x{w} images; MNIST-style images can only be padded"
        )
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((*x.shape[:-2], size, size), x.dtype)
    out[..., top : top + h, left : left + w] = x
    return out


def digits(_root, task: int, classes: tuple[int, ...], _options) -> RawTask:
    x, y = ds.digits_arrays()
    sel = np.flatnonzero(np.isin(y, classes))
    x, y = x[sel], y[sel]
    keep, held = stratified_split(y, DIGITS_TEST_FRACTION, split_seed("split-digits", task, "test"))
    return RawTask(x[keep], y[keep], x[held], y[held], scaled(16.0, divide=True), f"split-digits task {task}", classes)


def mnist_like(name: str, root, task: int, classes: tuple[int, ...], options) -> RawTask:
    fashion = name == "split-fashion"
    sub, fallback = ("fashion-mnist", DEBIAN_FASHION) if fashion else ("mnist", None)
    what = "Fashion-MNIST IDX files" if fashion else "MNIST IDX files"
    found = ds.locate(
        name, what, candidates(name, root, sub, fallback), MNIST_FILES, True, resolve_data_root(root), sub
    )
    (xtr, ytr), (xte, yte) = ds.mnist_arrays(name, found, sub)
    mean, std = FASHION_NORM if fashion else MNIST_NORM
    if name == "pmnist":
        xtr, xte = (x.reshape(len(x), -1) for x in (xtr, xte))  # (N, 784); the permutation is in prep
        prep = scaled(1 / 255.0, mean=mean, std=std, permutation=pmnist_permutation(task))
        return RawTask(xtr, ytr, xte, yte, prep, f"pmnist task {task}", classes)
    (xtr, ytr), (xte, yte) = _select(xtr, ytr, classes), _select(xte, yte, classes)
    size = getattr(options, "image_size", None)
    xtr, xte = pad_images(xtr[:, None], size), pad_images(xte[:, None], size)  # (N, 1, 28, 28) or padded
    return RawTask(
        xtr, ytr, xte, yte, scaled(1 / 255.0, mean=mean, std=std), f"{name} task {task}", classes, per_channel=True
    )


def cifar(name: str, root, task: int, classes: tuple[int, ...], _options) -> RawTask:
    hundred = name == "split-cifar100"
    folder_name, files = ("cifar-100-python", CIFAR100_FILES) if hundred else ("cifar-10-batches-py", CIFAR10_FILES)
    found = ds.locate(
        name,
        "CIFAR python-pickle batches",
        candidates(name, root, folder_name),
        files,
        False,
        resolve_data_root(root),
        folder_name,
    )
    label_key, n_labels = ("fine_labels", 100) if hundred else ("labels", 10)
    parts = [ds.cifar_batch(found[f], label_key, n_labels, name, f"{folder_name}/{f}") for f in files]
    train, test = parts[:-1], parts[-1]
    xtr, ytr = np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train])
    (xtr, ytr), (xte, yte) = _select(xtr, ytr, classes), _select(*test, classes)
    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (CIFAR100_NORM if hundred else CIFAR10_NORM))
    xtr, xte = (x.reshape(len(x), 3, 32, 32) for x in (xtr, xte))  # (N, C, H, W), channel-major rows
    return RawTask(
        xtr, ytr, xte, yte, scaled(1 / 255.0, mean=mean, std=std), f"{name} task {task}", classes, per_channel=True
    )


def npz_input_prep(where: str, key: str, x: np.ndarray) -> Preprocess:
    """How npz inputs become float32: uint8 divided by 255 (images), other numbers as they are."""
    if x.dtype == np.uint8:
        return scaled(255.0, divide=True)
    if x.dtype.kind in "fiub":
        return scaled(1.0)
    raise DataError(f"{where}: {key} has dtype {x.dtype}; inputs must be real numbers")


def npz(root, task: int, _classes, _options) -> RawTask:
    path = ds.npz_files(require_root("npz", root, "task<T>.npz files"))[task]
    arrays, where = ds.npz_arrays(path), f"npz task {task} ({path})"
    xtr, ytr, xte, yte = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    check_pair(where, "x_train", "y_train", xtr, ytr)
    ytr, yte = label_values(where, "y_train", ytr), label_values(where, "y_test", yte)
    prep = npz_input_prep(where, "x_train", xtr)
    for key in ("x_test", "x_val"):
        if key in arrays and npz_input_prep(where, key, arrays[key]).divide != prep.divide:
            raise DataError(
                f"{where}: {key} has dtype {arrays[key].dtype} but x_train {xtr.dtype}; use one input dtype"
            )
    val = (arrays["x_val"], label_values(where, "y_val", arrays["y_val"])) if "x_val" in arrays else None
    return RawTask(xtr, ytr, xte, yte, prep, where, None, val)


def image_folder(root, task: int, _classes, options) -> RawTask:
    from wsncli.engine.data import images  # Pillow is optional: imported only for image data

    found = images.image_folder_task(
        require_root("image-folder", root, "task<T>/ image folders"),
        task,
        getattr(options, "image_size", None),
        getattr(options, "channels", None),
        on_progress=getattr(options, "on_progress", None),
    )
    return _image_task(found, f"image-folder task {task} ({found.source})")


def tinyimagenet(root, task: int, _classes, options) -> RawTask:
    from wsncli.engine.data import images

    folder = require_root("split-tinyimagenet", root, "tiny-imagenet-200/")
    if (folder / "tiny-imagenet-200").is_dir():
        folder = folder / "tiny-imagenet-200"
    found = images.tinyimagenet_task(
        folder,
        task,
        getattr(options, "n_tasks", None) or 40,
        getattr(options, "image_size", None),
        on_progress=getattr(options, "on_progress", None),
    )
    _check_tinyimagenet_counts(found, folder, getattr(options, "image_size", None))
    return _image_task(found, f"split-tinyimagenet task {task}")


def _check_tinyimagenet_counts(found, folder: Path, image_size: int | None) -> None:
    """TinyImageNet has no published digest of its unpacked files: check the published counts instead
    (500 training and 50 val images per class, 64x64 unless --image-size resized them)."""
    exp = expected(TINYIMAGENET_KEY)
    if exp.source != "pinned":  # listed in $WSN_DATA_CHECKSUMS ('-': any content)
        return
    _, per_train, per_val, side = TINYIMAGENET_COUNTS
    for split, y, want in (("train", found.y_train, per_train), ("val", found.y_test, per_val)):
        counts = np.bincount(y, minlength=len(found.classes))
        bad = np.flatnonzero(counts != want)
        if len(bad):
            c = int(bad[0])
            raise DataError(
                f"split-tinyimagenet: {folder} has {int(counts[c])} {split} images of class {found.classes[c]}, "
                f"expected {want} (TinyImageNet's published counts; a line '- {TINYIMAGENET_KEY}' in a "
                f"{CHECKSUMS_ENV} file accepts another copy)"
            )
    if image_size is None and found.image_shape[1:] != (side, side):
        raise DataError(f"split-tinyimagenet: {folder} holds {found.image_shape[1:]} images, expected {side}x{side}")


def _image_task(found, where: str) -> RawTask:
    names = np.asarray(found.classes)
    ytr, yte = names[found.y_train], names[found.y_test]  # original labels: class folder names (wnids)
    return RawTask(
        found.x_train, ytr, found.x_test, yte, scaled(1 / 255.0), where, tuple(sorted(found.classes)), per_channel=True
    )
