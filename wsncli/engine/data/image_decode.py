"""Decoding untrusted PNG and JPEG files with Pillow: header checks before any pixel, then uint8 (C, H, W)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from wsncli.errors import DataError

MAX_SIDE = 4096  # pixels; a file declaring a wider or taller image is refused before decoding
_FORMATS = ("PNG", "JPEG")  # Pillow opens multi-picture (MPO) JPEGs through JPEG; the first picture is used
GRAY_MODES = frozenset({"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_WIDE_GRAY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})  # 16-bit grayscale: keep the high byte


def pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow: pip install 'wsn[images]'") from None
    return Image


@contextmanager
def pillow_limits(Image) -> Iterator[None]:
    """Pillow's decompression-bomb limit at MAX_SIDE² pixels for the call (restored after)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused by open_image itself
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


@contextmanager
def open_image(Image, name: str, path: Path):
    """The image at `path`, opened (header only) and checked against MAX_SIDE."""
    try:
        img = Image.open(path, formats=_FORMATS)
    except Image.DecompressionBombError:
        raise DataError(
            f"{name}: {path} declares over {2 * MAX_SIDE * MAX_SIDE} pixels, over the {MAX_SIDE}x{MAX_SIDE} limit; "
            "refused before decoding"
        ) from None
    except OSError as exc:
        detail = (
            exc.strerror or str(exc) if not isinstance(exc, Image.UnidentifiedImageError) else "unrecognised content"
        )
        raise DataError(f"{name}: {path} is not a readable PNG or JPEG image ({detail})") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted header is bad data
        raise DataError(f"{name}: {path} is not a readable PNG or JPEG image ({type(exc).__name__}: {exc})") from None
    with img:
        w, h = img.size
        if w > MAX_SIDE or h > MAX_SIDE:
            raise DataError(
                f"{name}: {path} declares {w}x{h} pixels, over the {MAX_SIDE}x{MAX_SIDE} limit; refused before decoding"
            )
        yield img


def size_message(name: str, path: Path, got: tuple[int, int], want: tuple[int, int], first: Path | None) -> str:
    if name == "predict":  # predict has no --image-size: the task's images were not resized
        return (
            f"predict: {path} is {got[0]}x{got[1]} but the task was learned on {want[0]}x{want[1]} images; resize "
            f"the images to {want[0]}x{want[1]} first"
        )
    like = f"like {first}" if first is not None else "as it was when scanned"
    return (
        f"{name}: {path} is {got[0]}x{got[1]} but the task's images are {want[0]}x{want[1]} ({like}); "
        "pass --image-size N to resize them all to NxN"
    )


def decode_image(
    Image, name: str, path: Path, channels: int, hw: tuple[int, int], image_size: int | None
) -> np.ndarray:
    """One image as uint8 (C, H, W): L or RGB (16-bit gray keeps its high byte), resized when asked."""
    with open_image(Image, name, path) as img:
        if image_size is None and img.size != (hw[1], hw[0]):  # the file changed since the scan
            raise DataError(size_message(name, path, img.size, (hw[1], hw[0]), None))
        try:
            img.load()
            if img.mode in _WIDE_GRAY:
                wide = np.asarray(img, dtype=np.int64)  # (H, W)
                img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))  # mode L
            img = img.convert("L" if channels == 1 else "RGB")
            if image_size is not None:
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)  # (H, W) or (H, W, 3)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to decode an untrusted file is bad data
            raise DataError(f"{name}: cannot decode {path} ({type(exc).__name__}: {exc})") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_images(
    files: list[Path], channels: int, image_size: int | None, expected_size: tuple[int, int]
) -> np.ndarray:
    """Images to predict on, as the task's inputs: uint8 (N, C, H, W), resized to image_size (when
    the task's images were resized) or required to be expected_size (H, W)."""
    Image = pillow()
    out = np.empty((len(files), channels, *expected_size), dtype=np.uint8)  # (N, C, H, W)
    with pillow_limits(Image):
        for i, path in enumerate(files):
            out[i] = decode_image(Image, "predict", Path(path), channels, tuple(expected_size), image_size)
    return out
