"""Image readers: the image-folder and TinyImageNet layouts (generated tiny), channels, sizes, limits, cache."""

from __future__ import annotations

import os
import re
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from wsncli.engine.data import image_cache
from wsncli.engine.data import images as I
from wsncli.errors import DataError


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, tmp_path):
    """Tests never touch ~/.cache: the default cache folder is a per-test one."""
    monkeypatch.setenv("WSN_CACHE_DIR", str(tmp_path / "cache"))


def save(path: Path, pixels: np.ndarray, fmt: str | None = None) -> Path:
    """Write (H, W) or (H, W, 3) uint8 (or (H, W) uint16) pixels as an image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))
    return path


def rgb(seed: int, h: int = 3, w: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def gray(seed: int, h: int = 3, w: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def make_task(
    root: Path, task: int = 1, classes=("b", "a"), n_train: int = 2, n_test: int = 1, kind=rgb, size=(3, 4)
) -> dict:
    """DIR/task<T>/{train,test}/<class>/<i>.png; returns {(split, class): [pixels...]} in file order."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(classes):
            out[split, cls] = [kind(1000 * task + 100 * c + 10 * (split == "test") + i, *size) for i in range(n)]
            for i, px in enumerate(out[split, cls]):
                save(root / f"task{task}" / split / cls / f"{i}.png", px)
    return out


def png_declaring(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares w x h pixels (8-bit gray) and holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.fixture
def count_opens(monkeypatch):
    calls = []
    real = Image.open

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return calls


def forbid_open(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", fail)


# ---- image-folder layout ------------------------------------------------------------------------


def test_task_ids_are_the_task_folders_sorted(tmp_path):
    for name in ("task10", "task2", "task1", ".task3", "taskX", "tasks"):
        (tmp_path / name).mkdir()
    (tmp_path / "task4").write_text("a file, not a folder")
    assert I.image_folder_tasks(tmp_path) == (1, 2, 10)


def test_arrays_labels_and_classes(tmp_path):
    px = make_task(tmp_path, classes=("b", "a"), n_train=2, n_test=1)
    d = I.image_folder_task(tmp_path, 1)
    assert d.classes == ("a", "b") and d.source == str(tmp_path / "task1")
    assert d.y_train.tolist() == [0, 0, 1, 1] and d.y_test.tolist() == [0, 1]
    assert (
        d.x_train.dtype == np.uint8
        and d.x_train.shape == (4, 3, 3, 4)
        and d.x_test.shape == (2, 3, 3, 4)
        and d.image_shape == (3, 3, 4)
    )
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    want = np.stack([p.transpose(2, 0, 1) for p in px["train", "a"] + px["train", "b"]])
    np.testing.assert_array_equal(d.x_train, want)  # PNG is lossless: the pixels as written, (N, C, H, W)
    for arr in (d.x_train, d.y_train, d.x_test, d.y_test):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 0


def test_extensions_any_case_and_other_and_hidden_files_ignored(tmp_path):
    cls = tmp_path / "task1" / "train" / "a"
    save(cls / "x.PNG", gray(1))
    save(cls / "y.Jpg", gray(2))
    save(cls / "z.jpeg", gray(3))
    save(cls / ".hidden.png", gray(4))
    (cls / "notes.txt").write_text("not an image")
    (cls / "sub").mkdir()
    save(tmp_path / "task1" / "train" / ".hidden" / "q.png", gray(5))  # a hidden class folder
    (tmp_path / "task1" / "train" / "README").write_text("a file beside the class folders")
    save(tmp_path / "task1" / "test" / "a" / "t.png", gray(6))
    d = I.image_folder_task(tmp_path, 1)
    assert d.classes == ("a",) and len(d.x_train) == 3 and len(d.x_test) == 1
    np.testing.assert_array_equal(d.x_train[0, 0], gray(1))


def test_layout_refusals(tmp_path):
    name = "image-folder"
    assert refusal(I.image_folder_task, tmp_path / "nope", 1) == f"{name}: {tmp_path / 'nope'} is not a folder"
    assert refusal(I.image_folder_tasks, tmp_path) == (
        f"{name}: no task folders in {tmp_path}: expected "
        f"{tmp_path}/task<T>/{{train,test}}/<class>/*.png|*.jpg|*.jpeg (T = 1, 2, ...)"
    )
    (tmp_path / "task0").mkdir()
    assert (
        refusal(I.image_folder_tasks, tmp_path)
        == f"{name}: {tmp_path / 'task0'} names task 0; task ids must be positive"
    )
    (tmp_path / "task0").rmdir()
    (tmp_path / "task01").mkdir()
    (tmp_path / "task1").mkdir()
    assert refusal(I.image_folder_tasks, tmp_path) == f"{name}: task 1 has two folders, task01 and task1; keep one"
    (tmp_path / "task01").rmdir()
    assert refusal(I.image_folder_task, tmp_path, 2) == f"{name}: no folder for task 2 in {tmp_path} (tasks found: 1)"
    t1 = tmp_path / "task1"
    assert refusal(I.image_folder_task, tmp_path, 1) == f"{name}: {t1} lacks a train/ folder"
    (t1 / "train").mkdir()
    (t1 / "test").mkdir()
    assert refusal(I.image_folder_task, tmp_path, 1) == f"{name}: {t1 / 'train'} has no class folders"
    (t1 / "train" / "a").mkdir()
    assert refusal(I.image_folder_task, tmp_path, 1) == f"{name}: {t1 / 'test'} has no class folders"
    (t1 / "test" / "a").mkdir()
    assert (
        refusal(I.image_folder_task, tmp_path, 1)
        == f"{name}: class folder {t1 / 'train' / 'a'} holds no images (*.png, *.jpg, *.jpeg)"
    )
    save(t1 / "train" / "a" / "0.png", gray(0))
    (t1 / "test" / "a" / "0.txt").write_text("x")
    assert (
        refusal(I.image_folder_task, tmp_path, 1)
        == f"{name}: class folder {t1 / 'test' / 'a'} holds no images (*.png, *.jpg, *.jpeg)"
    )


def test_train_and_test_must_have_the_same_classes(tmp_path):
    make_task(tmp_path, classes=("a", "b", "c"))
    t1 = tmp_path / "task1"
    for cls in ("b", "c"):
        for f in (t1 / "test" / cls).iterdir():
            f.unlink()
        (t1 / "test" / cls).rmdir()
    save(t1 / "test" / "d" / "0.png", rgb(0))
    assert (
        refusal(I.image_folder_task, tmp_path, 1)
        == f"image-folder: {t1}: train and test have different classes (only in train: b, c; only in test: d)"
    )


@pytest.mark.parametrize(
    ("image_size", "channels", "want"),
    [
        (0, None, "image size must be an integer from 1 to 4096, got 0"),
        (4097, None, "image size must be an integer from 1 to 4096, got 4097"),
        (True, None, "image size must be an integer from 1 to 4096, got True"),
        (None, 2, "channels must be 1 or 3, got 2"),
    ],
)
def test_setting_refusals(tmp_path, image_size, channels, want):
    make_task(tmp_path)
    assert (
        refusal(I.image_folder_task, tmp_path, 1, image_size=image_size, channels=channels) == f"image-folder: {want}"
    )


# ---- channels, sizes, decoding ------------------------------------------------------------------


def test_grayscale_train_gives_one_channel_and_converts_rgb_test_images(tmp_path):
    make_task(tmp_path, classes=("a",), kind=gray)
    save(tmp_path / "task1" / "test" / "a" / "9.png", rgb(9))
    Image.fromarray(gray(7) > 127).save(tmp_path / "task1" / "train" / "a" / "8.png")  # mode "1"
    d = I.image_folder_task(tmp_path, 1)
    assert d.image_shape == (1, 3, 4)
    np.testing.assert_array_equal(d.x_test[-1, 0], np.asarray(Image.fromarray(rgb(9)).convert("L")))
    np.testing.assert_array_equal(d.x_train[2, 0], np.where(gray(7) > 127, 255, 0))


def test_one_rgb_train_image_gives_three_channels(tmp_path):
    make_task(tmp_path, classes=("a",), kind=gray)
    save(tmp_path / "task1" / "train" / "a" / "9.png", rgb(9))
    d = I.image_folder_task(tmp_path, 1)
    assert d.image_shape == (3, 3, 4)
    np.testing.assert_array_equal(d.x_train[0], np.stack([gray(1000)] * 3))  # gray replicated to R, G, B


def test_channels_can_be_forced(tmp_path):
    make_task(tmp_path, classes=("a",), kind=gray)
    assert I.image_folder_task(tmp_path, 1, channels=3).image_shape == (3, 3, 4)
    make_task(tmp_path, task=2, classes=("a",), kind=rgb)
    d = I.image_folder_task(tmp_path, 2, channels=1)
    np.testing.assert_array_equal(d.x_train[0, 0], np.asarray(Image.fromarray(rgb(2000)).convert("L")))


def test_sixteen_bit_grayscale_keeps_the_high_byte(tmp_path):
    wide = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 7).astype(np.uint16)
    save(tmp_path / "task1" / "train" / "a" / "0.png", wide)
    save(tmp_path / "task1" / "test" / "a" / "0.png", wide)
    d = I.image_folder_task(tmp_path, 1)
    assert d.image_shape == (1, 3, 4)
    np.testing.assert_array_equal(d.x_train[0, 0], (wide >> 8).astype(np.uint8))


def test_images_of_another_size_are_refused_without_image_size(tmp_path):
    make_task(tmp_path, classes=("a",))
    odd = save(tmp_path / "task1" / "test" / "a" / "5.png", rgb(5, 6, 2))
    first = tmp_path / "task1" / "train" / "a" / "0.png"
    assert refusal(I.image_folder_task, tmp_path, 1) == (
        f"image-folder: {odd} is 2x6 but the task's images are 4x3 (like {first}); pass --image-size N to resize "
        "them all to NxN"
    )


def test_an_image_that_changes_size_after_the_header_scan_is_refused(tmp_path, monkeypatch):
    make_task(tmp_path, classes=("a",))
    monkeypatch.setattr(I, "_scan", lambda *_args: (3, (5, 5)))  # as if every file was 5x5 when scanned
    f = tmp_path / "task1" / "train" / "a" / "0.png"
    assert refusal(I.image_folder_task, tmp_path, 1) == (
        f"image-folder: {f} is 4x3 but the task's images are 5x5 (as it was when scanned); pass --image-size N to "
        "resize them all to NxN"
    )


def test_image_size_resizes_every_image_bilinear(tmp_path):
    make_task(tmp_path, classes=("a",))
    save(tmp_path / "task1" / "test" / "a" / "5.png", rgb(5, 6, 2))
    d = I.image_folder_task(tmp_path, 1, image_size=2)
    assert d.x_train.shape == (2, 3, 2, 2) and d.x_test.shape == (2, 3, 2, 2)
    want = np.asarray(Image.fromarray(rgb(5, 6, 2)).resize((2, 2), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(d.x_test[1], want)


def test_corrupt_and_foreign_images_are_refused_naming_the_file(tmp_path):
    make_task(tmp_path, classes=("a",))
    bad = tmp_path / "task1" / "train" / "a" / "1.png"
    bad.write_bytes(b"not an image at all")
    assert (
        refusal(I.image_folder_task, tmp_path, 1)
        == f"image-folder: {bad} is not a readable PNG or JPEG image (unrecognised content)"
    )
    save(bad, rgb(1), fmt="GIF")  # Pillow reads GIFs, wsn opens only PNG and JPEG
    assert (
        refusal(I.image_folder_task, tmp_path, 1)
        == f"image-folder: {bad} is not a readable PNG or JPEG image (unrecognised content)"
    )
    raw = save(bad, rgb(1, 40, 40)).read_bytes()
    make_task(tmp_path, classes=("a",), size=(40, 40))
    bad.write_bytes(raw[: len(raw) // 2])  # a valid header, then the data stops
    assert re.fullmatch(
        re.escape(f"image-folder: cannot decode {bad} (") + r"\w+: .+\)", refusal(I.image_folder_task, tmp_path, 1)
    )


def test_pillow_missing(tmp_path, monkeypatch):
    make_task(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert refusal(I.image_folder_task, tmp_path, 1) == "image folders need Pillow: pip install 'wsn[images]'"


def test_progress_is_reported_while_decoding_only(tmp_path):
    make_task(tmp_path, classes=("a", "b"), n_train=2, n_test=1)
    seen = []
    I.image_folder_task(tmp_path, 1, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]
    seen.clear()
    I.image_folder_task(tmp_path, 1, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == []  # loaded from the cache


# ---- limits -------------------------------------------------------------------------------------


def _no_decoding(monkeypatch):
    def fail(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)


@pytest.mark.parametrize(
    ("w", "h", "declared"),
    [(5000, 10, "5000x10 pixels"), (10, 4097, "10x4097 pixels"), (100_000, 100_000, "over 33554432 pixels")],
)
def test_huge_declared_images_are_refused_before_decoding(tmp_path, monkeypatch, w, h, declared):
    make_task(tmp_path, classes=("a",))
    big = png_declaring(tmp_path / "task1" / "test" / "a" / "big.png", w, h)
    _no_decoding(monkeypatch)
    before = Image.MAX_IMAGE_PIXELS
    assert (
        refusal(I.image_folder_task, tmp_path, 1)
        == f"image-folder: {big} declares {declared}, over the 4096x4096 limit; refused before decoding"
    )
    assert Image.MAX_IMAGE_PIXELS == before  # restored


def test_a_task_over_the_byte_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    make_task(tmp_path, classes=("a", "b"), n_train=2, n_test=1)  # 6 images of 3x3x4 = 216 bytes
    monkeypatch.setattr(I, "MAX_TASK_BYTES", 215)
    _no_decoding(monkeypatch)
    assert refusal(I.image_folder_task, tmp_path, 1) == (
        f"image-folder: {tmp_path / 'task1'} would decode to 0.0 GiB (6 images of 3x3x4), over the 2.00234e-07 "
        "GiB limit; "
        "pass --image-size N to shrink the images"
    )
    assert I.MAX_SIDE == 4096 and I.MAX_TASK_BYTES == 215 and image_cache.READER_VERSION == 1


def test_the_default_limits():
    assert I.MAX_SIDE == 4096 and I.MAX_TASK_BYTES == 4 * 2**30


# ---- cache --------------------------------------------------------------------------------------


def _cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_second_load_comes_from_the_cache_without_opening_an_image(tmp_path, monkeypatch):
    make_task(tmp_path)
    first = I.image_folder_task(tmp_path, 1)
    cache = tmp_path / "cache"
    files = _cache_files(cache)
    assert len(files) == 1 and re.fullmatch(r"img-[0-9a-f]{64}\.npz", files[0])
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    forbid_open(monkeypatch)
    again = I.image_folder_task(tmp_path, 1)
    for a, b in (
        (first.x_train, again.x_train),
        (first.y_train, again.y_train),
        (first.x_test, again.x_test),
        (first.y_test, again.y_test),
    ):
        assert a.dtype == b.dtype and not b.flags.writeable
        np.testing.assert_array_equal(a, b)
    assert again.classes == first.classes


def test_cache_dir_argument_and_key_settings(tmp_path, count_opens):
    make_task(tmp_path, classes=("a",), n_train=1, n_test=1)
    mine = tmp_path / "mine"
    I.image_folder_task(tmp_path, 1, cache_dir=mine)
    I.image_folder_task(tmp_path, 1, cache_dir=mine, image_size=2)  # another setting: another key
    I.image_folder_task(tmp_path, 1, cache_dir=mine, channels=1)
    assert len(_cache_files(mine)) == 3 and not (tmp_path / "cache").exists()
    n = len(count_opens)
    for kwargs in ({}, {"image_size": 2}, {"channels": 1}):
        I.image_folder_task(tmp_path, 1, cache_dir=mine, **kwargs)
    assert len(count_opens) == n


def test_a_changed_mtime_or_size_invalidates_the_cache(tmp_path, count_opens):
    make_task(tmp_path, classes=("a",), n_train=2, n_test=1)
    I.image_folder_task(tmp_path, 1)
    n = len(count_opens)
    f = tmp_path / "task1" / "train" / "a" / "1.png"
    st0 = f.stat()
    os.utime(f, ns=(st0.st_atime_ns, st0.st_mtime_ns + 1))
    I.image_folder_task(tmp_path, 1)
    assert len(count_opens) > n  # decoded again
    n = len(count_opens)
    I.image_folder_task(tmp_path, 1)
    assert len(count_opens) == n  # and cached again
    st1 = f.stat()
    flat = np.full((3, 4, 3), 77, dtype=np.uint8)
    save(f, flat)  # other pixels, compressed to another file size, the same mtime
    os.utime(f, ns=(st1.st_atime_ns, st1.st_mtime_ns))
    assert f.stat().st_size != st1.st_size and f.stat().st_mtime_ns == st1.st_mtime_ns
    d = I.image_folder_task(tmp_path, 1)
    assert len(count_opens) > n
    np.testing.assert_array_equal(d.x_train[1], flat.transpose(2, 0, 1))


def _corrupt(path: Path, how: str) -> None:
    arrays = dict(np.load(path))
    if how == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "compressed":
        np.savez_compressed(path, **arrays)
    elif how == "extra array":
        np.savez(path, **arrays, extra=np.zeros(1))
    elif how == "wrong labels":
        np.savez(path, **{**arrays, "y_train": arrays["y_train"][::-1].copy()})
    elif how == "wrong dtype":
        np.savez(path, **{**arrays, "x_train": arrays["x_train"].astype(np.int16)})
    elif how == "wrong shape":
        np.savez(path, **{**arrays, "x_test": arrays["x_test"][:, :, :2]})
    elif how == "short":
        np.savez(path, **{**arrays, "x_train": arrays["x_train"][:1]})


@pytest.mark.parametrize(
    "how", ["garbage", "truncated", "compressed", "extra array", "wrong labels", "wrong dtype", "wrong shape", "short"]
)
def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, monkeypatch, how):
    make_task(tmp_path, classes=("a", "b"), n_train=2, n_test=1)
    good = I.image_folder_task(tmp_path, 1)
    (path,) = (tmp_path / "cache").iterdir()
    _corrupt(path, how)
    d = I.image_folder_task(tmp_path, 1)
    assert d.x_train.dtype == d.x_test.dtype == np.uint8
    np.testing.assert_array_equal(d.x_train, good.x_train)
    np.testing.assert_array_equal(d.x_test, good.x_test)
    with zipfile.ZipFile(path) as zf:  # rewritten as store_cached writes it
        assert sorted(i.filename for i in zf.infolist()) == ["x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    with np.load(path) as z:
        np.testing.assert_array_equal(z["y_train"], good.y_train)
        assert z["x_train"].dtype == np.uint8
        np.testing.assert_array_equal(z["x_train"], good.x_train)
    forbid_open(monkeypatch)
    I.image_folder_task(tmp_path, 1)  # the rewritten file is a hit
    assert _cache_files(tmp_path / "cache") == [path.name]


def test_an_unwritable_cache_is_skipped(tmp_path):
    make_task(tmp_path)
    (tmp_path / "file").write_text("x")
    d = I.image_folder_task(tmp_path, 1, cache_dir=tmp_path / "file" / "cache")
    assert len(d.x_train) == 4


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_folder_is_skipped(tmp_path):
    make_task(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        d = I.image_folder_task(tmp_path, 1, cache_dir=ro)
        assert len(d.x_train) == 4 and _cache_files(ro) == []
    finally:
        ro.chmod(0o700)


def test_a_failed_cache_write_leaves_no_debris(tmp_path, monkeypatch):
    make_task(tmp_path)

    def half_then_fail(fh, **_arrays):
        fh.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_cache.np, "savez", half_then_fail)
    d = I.image_folder_task(tmp_path, 1)
    assert len(d.x_train) == 4 and _cache_files(tmp_path / "cache") == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_images_round_trip_through_decoding_and_cache_bit_for_bit(monkeypatch, data):
    channels = data.draw(st.sampled_from([1, 3]))
    h, w = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    counts = data.draw(
        st.lists(st.tuples(st.integers(1, 3), st.integers(1, 2)), min_size=1, max_size=3)
    )  # (train, test) per class
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root, want = Path(tmp), {"train": [], "test": []}
        for c, (n_train, n_test) in enumerate(counts):
            for split, n in (("train", n_train), ("test", n_test)):
                for i in range(n):
                    px = rng.integers(0, 256, size=(h, w) if channels == 1 else (h, w, 3), dtype=np.uint8)
                    save(root / "task1" / split / f"c{c}" / f"{i}.png", px)
                    want[split].append(px[None] if channels == 1 else px.transpose(2, 0, 1))
        decoded = I.image_folder_task(root, 1, cache_dir=root / "cache")
        with monkeypatch.context() as m:
            forbid_open(m)
            cached = I.image_folder_task(root, 1, cache_dir=root / "cache")
    np.testing.assert_array_equal(decoded.x_train, np.stack(want["train"]))
    np.testing.assert_array_equal(decoded.x_test, np.stack(want["test"]))
    for a, b in ((decoded.x_train, cached.x_train), (decoded.x_test, cached.x_test)):
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_cache_key_covers_folder_files_and_settings(tmp_path):
    base = image_cache.cache_key(tmp_path, {"image_size": None}, [("a.png", 10, 5)])
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert base == image_cache.cache_key(tmp_path, {"image_size": None}, [("a.png", 10, 5)])
    for other in (
        image_cache.cache_key(tmp_path / "x", {"image_size": None}, [("a.png", 10, 5)]),
        image_cache.cache_key(tmp_path, {"image_size": 8}, [("a.png", 10, 5)]),
        image_cache.cache_key(tmp_path, {"image_size": None}, [("b.png", 10, 5)]),
        image_cache.cache_key(tmp_path, {"image_size": None}, [("a.png", 11, 5)]),
        image_cache.cache_key(tmp_path, {"image_size": None}, [("a.png", 10, 6)]),
    ):
        assert other != base


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("WSN_CACHE_DIR", str(tmp_path / "c"))
    assert image_cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.setenv("WSN_CACHE_DIR", " ")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert image_cache.default_cache_dir() == tmp_path / ".cache" / "wsn" / "images"


# ---- split-tinyimagenet -------------------------------------------------------------------------


def make_tiny(
    root: Path, wnids: list[str], present: list[str] | None = None, n_train: int = 3, n_val: int = 2, side: int = 64
) -> Path:
    """tiny-imagenet-200/ in the real layout: wnids.txt, train/<wnid>/images/*.JPEG (+ boxes), val/."""
    top = root / "tiny-imagenet-200"
    top.mkdir(parents=True)
    (top / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    lines = []
    for c, wnid in enumerate(present or wnids):
        for i in range(n_train):
            save(top / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rgb(10 * c + i, side, side))
        (top / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t10\t10\n")
        for _ in range(n_val):
            lines.append(f"val_{len(lines)}.JPEG\t{wnid}\t1\t2\t30\t40")
    order = np.random.default_rng(0).permutation(len(lines))  # annotations in no particular order
    for j in order:
        save(top / "val" / "images" / f"val_{j}.JPEG", rgb(1000 + int(j), side, side))
    (top / "val" / "val_annotations.txt").write_text("".join(lines[j] + "\n" for j in order) + "\n")
    return top


def jpeg_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1)  # (3, H, W)


WNIDS = ["n03000000", "n01000000", "n04000000", "n02000000"]


def test_tinyimagenet_task_takes_its_slice_of_wnids_in_file_order(tmp_path, count_opens):
    top = make_tiny(tmp_path, WNIDS)
    d = I.tinyimagenet_task(top, 2, n_tasks=2)
    wanted = {f"val_{j}.JPEG" for j in range(4, 8)} | {
        f"{w}_{i}.JPEG" for w in ("n04000000", "n02000000") for i in range(3)
    }
    assert {Path(p).name for p in count_opens} == wanted  # only the task's classes are opened
    assert d.classes == ("n04000000", "n02000000") and d.source == f"{top} (task 2 of 2)"
    assert d.x_train.shape == (6, 3, 64, 64) and d.x_test.shape == (4, 3, 64, 64) and d.x_train.dtype == np.uint8
    assert d.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(
        d.x_train[3], jpeg_pixels(top / "train" / "n02000000" / "images" / "n02000000_0.JPEG")
    )
    # val images 4..7 are annotated n04 (4, 5) and n02 (6, 7); the test set is in file-name order
    assert d.y_test.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(d.x_test[2], jpeg_pixels(top / "val" / "images" / "val_6.JPEG"))
    assert not d.x_test.flags.writeable
    one = I.tinyimagenet_task(tmp_path, 1, n_tasks=4)  # the folder holding tiny-imagenet-200/ works too
    assert one.classes == ("n03000000",) and len(one.x_train) == 3 and one.y_test.tolist() == [0, 0]


def test_tinyimagenet_grayscale_jpegs_become_rgb_and_image_size_resizes(tmp_path):
    top = make_tiny(tmp_path, WNIDS[:2])
    save(top / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_0.JPEG", gray(5, 64, 64))  # a few real ones are grayscale
    d = I.tinyimagenet_task(top, 1, n_tasks=2)
    assert d.image_shape == (3, 64, 64)
    np.testing.assert_array_equal(d.x_train[0, 0], d.x_train[0, 2])
    small = I.tinyimagenet_task(top, 1, n_tasks=2, image_size=8)
    assert small.x_train.shape == (3, 3, 8, 8) and small.x_test.shape == (2, 3, 8, 8)
    for i in (1, 2):
        save(top / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_{i}.JPEG", gray(5 + i, 64, 64))
    assert I.tinyimagenet_task(top, 1, n_tasks=2).image_shape == (3, 64, 64)  # always RGB, even when all are gray


def test_tinyimagenet_with_the_real_200_classes(tmp_path, monkeypatch):
    wnids = [f"n{i:08d}" for i in range(200)]
    top = make_tiny(tmp_path, wnids, present=wnids[5:10], n_train=1, n_val=1, side=4)  # task 2 of 40 only
    d = I.tinyimagenet_task(top, 2, n_tasks=40)
    assert (
        d.classes == tuple(wnids[5:10])
        and d.y_train.tolist() == [0, 1, 2, 3, 4]
        and sorted(d.y_test.tolist()) == [0, 1, 2, 3, 4]
    )
    path = top / "wnids.txt"
    _no_decoding(monkeypatch)
    divisors = "1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 200"
    for n_tasks in (7, 0, 300):
        assert refusal(I.tinyimagenet_task, top, 1, n_tasks=n_tasks) == (
            f"split-tinyimagenet: {n_tasks} tasks cannot split the 200 classes of {path} evenly; use one of {divisors}"
        )
    for task in (0, 41):
        assert refusal(I.tinyimagenet_task, top, task, n_tasks=40) == (
            f"split-tinyimagenet: task {task} does not exist: the 40 tasks are numbered 1..40"
        )
    assert refusal(I.tinyimagenet_task, top, 1, n_tasks=40) == (
        f"split-tinyimagenet: {top / 'train' / wnids[0] / 'images'}/ is missing (class {wnids[0]} of {path})"
    )


def test_tinyimagenet_refusals(tmp_path):
    name = "split-tinyimagenet"
    assert refusal(I.tinyimagenet_task, tmp_path, 1, 1) == (
        f"{name}: {tmp_path} lacks wnids.txt: point it at the tiny-imagenet-200/ folder (wnids.txt, train/, val/)"
    )
    top = make_tiny(tmp_path, WNIDS[:2])
    wn, ann = top / "wnids.txt", top / "val" / "val_annotations.txt"
    for text, want in [
        ("n01000000\nn03000000\nn01000000\n", f"{wn} lists class n01000000 twice"),
        ("n03000000\n../etc\n", f"{wn} line 2: '../etc' is not a class id"),
        ("\n \n", f"{wn} lists no class ids"),
    ]:
        wn.write_text(text)
        assert refusal(I.tinyimagenet_task, top, 1, 1) == f"{name}: {want}"
    wn.write_text("n03000000\nn01000000\n")
    good = ann.read_text()
    last = len(good.splitlines())  # the file ends with one blank line, which is allowed
    for extra, want in [
        ("val_0.JPEG\tn01000000\n", f"line {last + 1}: val_0.JPEG is annotated twice"),
        ("val_9.JPEG\tn09000000\t1\t2\t3\t4\n", f"line {last + 1}: class 'n09000000' is not in wnids.txt"),
        ("../x.JPEG\tn01000000\n", f"line {last + 1}: '../x.JPEG' is not an image file name in val/images"),
        ("val_9.txt\tn01000000\n", f"line {last + 1}: 'val_9.txt' is not an image file name in val/images"),
        ("just-one-field\n", f"line {last + 1}: expected 'file<TAB>wnid<TAB>...', got 'just-one-field'"),
    ]:
        ann.write_text(good + extra)
        assert refusal(I.tinyimagenet_task, top, 1, 1) == f"{name}: {ann} {want}"
    ann.write_text(good + "val_99.JPEG\tn01000000\n")
    assert (
        refusal(I.tinyimagenet_task, top, 1, 1)
        == f"{name}: {top / 'val' / 'images' / 'val_99.JPEG'} (named in {ann}) is missing"
    )
    ann.write_text("".join(line + "\n" for line in good.splitlines() if "n03000000" not in line))
    assert refusal(I.tinyimagenet_task, top, 1, 2) == f"{name}: {ann} annotates no val images of class n03000000"
    ann.write_bytes(b"\xff\xfe")
    assert refusal(I.tinyimagenet_task, top, 1, 1) == f"{name}: {ann} is not UTF-8 text"
    ann.unlink()
    assert refusal(I.tinyimagenet_task, top, 1, 1) == f"{name}: {top} lacks val/val_annotations.txt"


def test_tinyimagenet_cache_hit_and_invalidation_by_annotations(tmp_path, monkeypatch, count_opens):
    top = make_tiny(tmp_path, WNIDS[:2], side=8)
    first = I.tinyimagenet_task(top, 1, n_tasks=1)
    n = len(count_opens)
    I.tinyimagenet_task(top, 1, n_tasks=1)
    assert len(count_opens) == n
    ann = top / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    swapped = [line.replace(WNIDS[0], "X").replace(WNIDS[1], WNIDS[0]).replace("X", WNIDS[1]) for line in lines]
    ann.write_text("\n".join(swapped) + "\n")  # same size, new labels
    d = I.tinyimagenet_task(top, 1, n_tasks=1)
    assert len(count_opens) > n and d.y_test.tolist() == (1 - first.y_test).tolist()
