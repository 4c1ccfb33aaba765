"""Readers for folders of image files: `image-folder` (task<T>/{train,test}/<class>/) and TinyImageNet.

Only the requested task's files are listed, checked (declared sizes, before any pixel is decoded)
and decoded, to uint8 (N, C, H, W). Decoded tasks are cached on disk (see image_cache). Pillow is an
optional dependency, imported when a task is loaded; only PNG and JPEG files are opened.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsncli.engine.data import image_cache
from wsncli.engine.data.image_decode import GRAY_MODES, MAX_SIDE, open_image, pillow, pillow_limits, size_message
from wsncli.engine.data.image_decode import decode_image as _decode
from wsncli.engine.data.image_decode import decode_images as decode_images
from wsncli.errors import DataError

MAX_TASK_BYTES = 4 << 30  # decoded uint8 bytes of one task (train + test)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared case-insensitively
_MAX_TEXT = 16 << 20  # bytes of wnids.txt / val_annotations.txt
_TASK_DIR = re.compile(r"task(\d+)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
Progress = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class ImageSplits:
    """One task's decoded images: uint8 (N, C, H, W) read-only, labels int64 indexing `classes`."""

    classes: tuple[str, ...]  # class folder names (sorted) or wnids (in wnids.txt order)
    x_train: np.ndarray  # (N, C, H, W) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, C, H, W) uint8
    y_test: np.ndarray  # (M,) int64
    source: str  # "DIR/task3" or "DIR (task 3 of 40)", for messages

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


@dataclass(frozen=True)
class _Listing:
    """A task's files before any image is opened: (path, label) per sample and the files' stats."""

    name: str  # benchmark name that prefixes messages
    source: str
    folder: Path  # resolved; file names in `stats` are relative to it
    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]
    test: tuple[tuple[Path, int], ...]
    stats: tuple[tuple[str, int, int], ...]  # (relative name, size, mtime_ns) of every file read
    settings: dict[str, object]


def image_folder_tasks(root: Path) -> tuple[int, ...]:
    """The task ids of `root`'s task<T>/ folders, sorted."""
    return tuple(sorted(_task_folders(root)))


def image_folder_task(
    root: Path,
    task: int,
    image_size: int | None = None,
    channels: int | None = None,
    cache_dir: Path | None = None,
    on_progress: Progress | None = None,
) -> ImageSplits:
    """Task `task` of an image-folder root: DIR/task<T>/{train,test}/<class>/*.{png,jpg,jpeg}.

    channels: 1 (L) or 3 (RGB); None = 1 when every train image is grayscale, else 3.
    image_size: None = every image must have the same size; N = resize each to N x N (bilinear).
    """
    name = "image-folder"
    _check_settings(name, image_size, channels)
    folders = _task_folders(root)
    if task not in folders:
        raise DataError(
            f"{name}: no folder for task {task} in {root} (tasks found: {', '.join(map(str, sorted(folders)))})"
        )
    task_dir = folders[task]
    splits = {}
    for split in ("train", "test"):
        if not (task_dir / split).is_dir():
            raise DataError(f"{name}: {task_dir} lacks a {split}/ folder")
        splits[split] = _class_folders(name, task_dir / split)
    train_set, test_set = set(splits["train"]), set(splits["test"])
    if train_set != test_set:
        only = [
            f"only in {s}: {', '.join(sorted(a - b))}"
            for s, a, b in (("train", train_set, test_set), ("test", test_set, train_set))
            if a - b
        ]
        raise DataError(f"{name}: {task_dir}: train and test have different classes ({'; '.join(only)})")
    classes = tuple(sorted(train_set))
    folder, stats, samples = task_dir.resolve(), [], {}
    for split in ("train", "test"):
        samples[split] = []
        for label, cls in enumerate(classes):
            for path, size, mtime in _image_files(name, splits[split][cls]):
                samples[split].append((path, label))
                stats.append((f"{split}/{cls}/{path.name}", size, mtime))
    listing = _Listing(
        name,
        str(task_dir),
        folder,
        classes,
        tuple(samples["train"]),
        tuple(samples["test"]),
        tuple(stats),
        {"kind": name, "classes": list(classes)},
    )
    return _load(listing, image_size, channels, cache_dir, on_progress)


def tinyimagenet_task(
    root: Path,
    task: int,
    n_tasks: int,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    on_progress: Progress | None = None,
) -> ImageSplits:
    """Task `task` of `n_tasks` from a tiny-imagenet-200/ folder (or a folder holding one), RGB.

    Task t holds the classes wnids[(t-1)*k : t*k], k = len(wnids) / n_tasks, in wnids.txt order; the
    labelled val/ set is the test set (the official test set has no labels).
    """
    name = "split-tinyimagenet"
    _check_settings(name, image_size, None)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    wnids_path = root / "wnids.txt"
    if not wnids_path.is_file():
        raise DataError(
            f"{name}: {root} lacks wnids.txt: point it at the tiny-imagenet-200/ folder (wnids.txt, train/, val/)"
        )
    wnids = _read_wnids(name, wnids_path)
    n = len(wnids)
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1 or n % n_tasks:
        divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
        raise DataError(
            f"{name}: {n_tasks!r} tasks cannot split the {n} classes of {wnids_path} evenly; use one of {divisors}"
        )
    if isinstance(task, bool) or not isinstance(task, int) or not 1 <= task <= n_tasks:
        raise DataError(f"{name}: task {task!r} does not exist: the {n_tasks} tasks are numbered 1..{n_tasks}")
    k = n // n_tasks
    classes = tuple(wnids[(task - 1) * k : task * k])
    ann_path = root / "val" / "val_annotations.txt"
    if not ann_path.is_file():
        raise DataError(f"{name}: {root} lacks val/val_annotations.txt")
    stats = [("wnids.txt", *_stat(name, wnids_path)), ("val/val_annotations.txt", *_stat(name, ann_path))]
    train = []
    for label, wnid in enumerate(classes):
        images = root / "train" / wnid / "images"
        if not images.is_dir():
            raise DataError(f"{name}: {images}/ is missing (class {wnid} of {wnids_path})")
        for path, size, mtime in _image_files(name, images):
            train.append((path, label))
            stats.append((f"train/{wnid}/images/{path.name}", size, mtime))
    test = []
    for file, wnid in _val_annotations(name, ann_path, set(wnids), set(classes)):
        path = root / "val" / "images" / file
        if not path.is_file():
            raise DataError(f"{name}: {path} (named in {ann_path}) is missing")
        test.append((path, classes.index(wnid)))
        stats.append((f"val/images/{file}", *_stat(name, path)))
    labelled = {lab for _, lab in test}
    for label, wnid in enumerate(classes):
        if label not in labelled:
            raise DataError(f"{name}: {ann_path} annotates no val images of class {wnid}")
    listing = _Listing(
        name,
        f"{root} (task {task} of {n_tasks})",
        root.resolve(),
        classes,
        tuple(train),
        tuple(test),
        tuple(stats),
        {"kind": name, "task": task, "n_tasks": n_tasks, "classes": list(classes)},
    )
    return _load(listing, image_size, 3, cache_dir, on_progress)


# ---- listing ------------------------------------------------------------------------------------


def _check_settings(name: str, image_size: int | None, channels: int | None) -> None:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or not 1 <= image_size <= MAX_SIDE
    ):
        raise DataError(f"{name}: image size must be an integer from 1 to {MAX_SIDE}, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"{name}: channels must be 1 or 3, got {channels!r}")


def _entries(name: str, folder: Path) -> list[os.DirEntry]:
    """The entries of `folder` that are not hidden, sorted by name."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{name}: cannot read {folder}: {exc.strerror or exc}") from None


def _is(name: str, folder: Path, entry: os.DirEntry, kind: str) -> bool:
    """entry.is_dir() / is_file(), following symlinks; one that cannot be followed (a symlink loop)
    is a DataError naming it, not a traceback."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as exc:
        raise DataError(f"{name}: cannot read {folder / entry.name}: {exc.strerror or exc}") from None


def _task_folders(root: Path) -> dict[int, Path]:
    name = "image-folder"
    if not root.is_dir():
        raise DataError(f"{name}: {root} is not a folder")
    found: dict[int, Path] = {}
    for entry in _entries(name, root):
        m = _TASK_DIR.fullmatch(entry.name)
        if not m or not _is(name, root, entry, "dir"):
            continue
        task = int(m.group(1))
        if task < 1:
            raise DataError(f"{name}: {root / entry.name} names task {task}; task ids must be positive")
        if task in found:
            raise DataError(f"{name}: task {task} has two folders, {found[task].name} and {entry.name}; keep one")
        found[task] = root / entry.name
    if not found:
        raise DataError(
            f"{name}: no task folders in {root}: expected "
            f"{root}/task<T>/{{train,test}}/<class>/*.png|*.jpg|*.jpeg (T = 1, 2, ...)"
        )
    return found


def _class_folders(name: str, split_dir: Path) -> dict[str, Path]:
    classes = {e.name: split_dir / e.name for e in _entries(name, split_dir) if _is(name, split_dir, e, "dir")}
    if not classes:
        raise DataError(f"{name}: {split_dir} has no class folders")
    return classes


def _image_files(name: str, folder: Path) -> list[tuple[Path, int, int]]:
    """(path, size, mtime_ns) of the images in `folder` (not hidden, an image suffix), sorted; never empty."""
    out = []
    for entry in _entries(name, folder):
        if os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and _is(name, folder, entry, "file"):
            try:
                st = entry.stat()
            except OSError as exc:
                raise DataError(f"{name}: cannot read {folder / entry.name}: {exc.strerror or exc}") from None
            out.append((folder / entry.name, st.st_size, st.st_mtime_ns))
    if not out:
        raise DataError(f"{name}: class folder {folder} holds no images (*.png, *.jpg, *.jpeg)")
    return out


def _stat(name: str, path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    return st.st_size, st.st_mtime_ns


def _read_text(name: str, path: Path) -> list[str]:
    size, _ = _stat(name, path)
    if size > _MAX_TEXT:
        raise DataError(f"{name}: {path} is {size} bytes, over the {_MAX_TEXT} byte limit for this file")
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"{name}: {path} is not UTF-8 text") from None


def _read_wnids(name: str, path: Path) -> list[str]:
    wnids: list[str] = []
    for i, line in enumerate(_read_text(name, path), 1):
        wnid = line.strip()
        if not wnid:
            continue
        if not _NAME.fullmatch(wnid):
            raise DataError(f"{name}: {path} line {i}: {wnid[:60]!r} is not a class id")
        if wnid in wnids:
            raise DataError(f"{name}: {path} lists class {wnid} twice")
        wnids.append(wnid)
    if not wnids:
        raise DataError(f"{name}: {path} lists no class ids")
    return wnids


def _val_annotations(name: str, path: Path, known: set[str], wanted: set[str]) -> list[tuple[str, str]]:
    """(file name, wnid) of the annotated val images of the `wanted` classes, sorted by file name."""
    seen: set[str] = set()
    out = []
    for i, line in enumerate(_read_text(name, path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{name}: {path} line {i}: expected 'file<TAB>wnid<TAB>...', got {line[:60]!r}")
        file, wnid = fields[0].strip(), fields[1].strip()
        if not _NAME.fullmatch(file) or os.path.splitext(file)[1].lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{name}: {path} line {i}: {file[:60]!r} is not an image file name in val/images")
        if wnid not in known:
            raise DataError(f"{name}: {path} line {i}: class {wnid[:60]!r} is not in wnids.txt")
        if file in seen:
            raise DataError(f"{name}: {path} line {i}: {file} is annotated twice")
        seen.add(file)
        if wnid in wanted:
            out.append((file, wnid))
    return sorted(out)


# ---- decoding -----------------------------------------------------------------------------------


def _load(
    listing: _Listing,
    image_size: int | None,
    channels: int | None,
    cache_dir: Path | None,
    on_progress: Progress | None,
) -> ImageSplits:
    Image = pillow()
    y_train = np.fromiter((lab for _, lab in listing.train), dtype=np.int64, count=len(listing.train))
    y_test = np.fromiter((lab for _, lab in listing.test), dtype=np.int64, count=len(listing.test))
    for y in (y_train, y_test):
        y.setflags(write=False)
    settings = {**listing.settings, "image_size": image_size, "channels": channels, "n_train": len(y_train)}
    path = image_cache.cache_path(
        cache_dir or image_cache.default_cache_dir(), image_cache.cache_key(listing.folder, settings, listing.stats)
    )
    hit = image_cache.load_cached(path, y_train, y_test, channels, image_size, MAX_TASK_BYTES)
    if hit is not None:
        return ImageSplits(listing.classes, hit[0], y_train, hit[1], y_test, listing.source)
    with pillow_limits(Image):
        channels, (h, w) = _scan(Image, listing, image_size, channels)
        n = len(y_train) + len(y_test)
        if n * channels * h * w > MAX_TASK_BYTES:
            raise DataError(
                f"{listing.name}: {listing.source} would decode to {n * channels * h * w / 2**30:.1f} GiB ({n} "
                "images of "
                f"{channels}x{h}x{w}), over the {MAX_TASK_BYTES / 2**30:g} GiB limit; pass --image-size N to "
                "shrink the images"
            )
        x = np.empty((n, channels, h, w), dtype=np.uint8)  # (N + M, C, H, W)
        for i, (file, _) in enumerate(listing.train + listing.test):
            x[i] = _decode(Image, listing.name, file, channels, (h, w), image_size)
            if on_progress is not None:
                on_progress(i + 1, n)
    x_train, x_test = x[: len(y_train)], x[len(y_train) :]
    image_cache.store_cached(path, {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test})
    for arr in (x, x_train, x_test):
        arr.setflags(write=False)
    return ImageSplits(listing.classes, x_train, y_train, x_test, y_test, listing.source)


def _scan(Image, listing: _Listing, image_size: int | None, channels: int | None) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) of the decoded task, from the image headers; every declared size checked."""
    all_gray, first, size = True, None, None
    for i, (path, _) in enumerate(listing.train + listing.test):
        with open_image(Image, listing.name, path) as img:
            if i < len(listing.train):
                all_gray = all_gray and img.mode in GRAY_MODES
            if image_size is None:
                if size is None:
                    first, size = path, img.size
                elif img.size != size:
                    raise DataError(size_message(listing.name, path, img.size, size, first))
    if channels is None:
        channels = 1 if all_gray else 3
    if image_size is not None:
        return channels, (image_size, image_size)
    return channels, (size[1], size[0])
