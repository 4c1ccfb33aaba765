"""Checked data: every file a named benchmark reads matches its pinned digest, shape and class counts
before use; the $WSN_DATA_CHECKSUMS override; the real files when this machine has them."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.datafiles import accept_any, checksums_file, pin
from tests.engine.test_data import MNIST_NAMES, data_error, make_cifar10, make_mnist, write_idx, write_pickle
from wsncli.engine.data import pinned as P
from wsncli.engine.data import readers as ds
from wsncli.engine.data import registry as D

REAL_ROOT = Path.home() / ".cache" / "wsn"  # where benchmarks/fetch_data.py puts the real files


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Parsed files are cached per process: a test of refusals must not see an earlier test's arrays."""
    ds._read_idx.cache_clear()
    ds._read_pickle_dict.cache_clear()
    ds.digits_arrays.cache_clear()
    yield
    ds.digits_arrays.cache_clear()


def test_pinned_table_is_well_formed_and_every_digest_distinct():
    lengths = {"sha256": 64, "md5": 32}
    for key, pin_ in P.PINNED.items():
        assert key == pin_.key and "/" in key and not key.endswith(".gz")
        assert len(pin_.digest) == lengths[pin_.algorithm] and int(pin_.digest, 16) >= 0
    digests = [p.digest for p in P.PINNED.values()]
    assert len(set(digests)) == len(digests)  # no dataset's file can pass for another's
    assert all(f"mnist/{n}" in P.PINNED and f"fashion-mnist/{n}" in P.PINNED for n in MNIST_NAMES)


def test_an_unlisted_file_is_refused_naming_file_expected_and_found(tmp_path):
    make_mnist(tmp_path / "mnist", dataset=None)  # generated: not the real MNIST
    msg = data_error(D.load_task, "split-mnist", 1, tmp_path)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    found = P.content_digest(path)
    want = P.PINNED["mnist/train-images-idx3-ubyte"].digest
    assert msg == (
        f"split-mnist: {path} is not the MNIST training images wsn expects: its sha256 after gunzip is {found}, "
        f"expected {want}"
    )


def test_a_fashion_folder_holding_mnist_files_is_refused_as_mnist(tmp_path):
    """The 5-Datasets loader bug (GPM issue #4): the Fashion-MNIST task silently trained on MNIST."""
    make_mnist(tmp_path / "mnist")  # accepted as MNIST
    shutil.copytree(tmp_path / "mnist", tmp_path / "fashion-mnist")
    make_mnist(tmp_path / "elsewhere", seed=3, dataset="fashion-mnist")  # what Fashion-MNIST is here
    msg = data_error(D.load_task, "split-fashion", 1, tmp_path)
    path = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    assert msg.startswith(f"split-fashion: {path} is not the fashion-mnist/train-images-idx3-ubyte wsn expects")
    assert f"(that is mnist/train-images-idx3-ubyte in {checksums_file()})" in msg
    assert data_error(D.load_task, "multi-dataset", 2, tmp_path).startswith("multi-dataset: ")


def test_shape_and_class_counts_are_checked_against_the_pinned_entry(tmp_path, monkeypatch):
    make_mnist(tmp_path / "mnist", dataset=None)
    folder = tmp_path / "mnist"
    digest = {n: P.content_digest(folder / f"{n}.gz") for n in MNIST_NAMES}
    for n in MNIST_NAMES:  # pinned as they are, but with the real files' shapes and counts
        real = P.PINNED[f"mnist/{n}"]
        monkeypatch.setitem(P.PINNED, real.key, P.Pinned(real.key, real.what, "sha256", digest[n], real.shape, None))
    assert data_error(D.load_task, "split-mnist", 1, tmp_path) == (
        f"split-mnist: {folder / 'train-images-idx3-ubyte.gz'} holds an array of shape (300, 28, 28), "
        "expected (60000, 28, 28) (MNIST training images)"
    )
    ds._read_idx.cache_clear()
    for n in MNIST_NAMES:
        real = P.PINNED[f"mnist/{n}"]
        counts = (31,) * 10 if "labels" in n else None
        monkeypatch.setitem(P.PINNED, real.key, P.Pinned(real.key, real.what, "sha256", digest[n], None, counts))
    assert data_error(D.load_task, "split-mnist", 1, tmp_path) == (
        f"split-mnist: {folder / 'train-labels-idx1-ubyte.gz'} holds 30 x 10 images per class, expected 31 x 10 "
        "(MNIST training labels)"
    )
    ds._read_idx.cache_clear()
    counts = {f"mnist/{n}": (30,) * 10 if n.startswith("train") else (10,) * 10 for n in MNIST_NAMES[1::2]}
    for key, c in counts.items():
        monkeypatch.setitem(P.PINNED, key, P.Pinned(key, "x", "sha256", digest[key.split("/")[1]], None, c))
    assert D.load_task("split-mnist", 1, tmp_path).n_classes == 2  # the same file with the right counts


def test_checksums_file_lines_any_content_and_errors(tmp_path):
    make_mnist(tmp_path / "mnist", dataset=None)
    sums = checksums_file()
    sums.write_text(
        "# comments and blank lines are skipped\n\n"
        + "".join(f"{'0' * 64}  mnist/{n}\n" for n in MNIST_NAMES)  # a second digest for one key: any of them
        + "".join(f"{P.content_digest(tmp_path / 'mnist' / f'{n}.gz')}  mnist/{n}\n" for n in MNIST_NAMES)
    )
    assert D.load_task("split-mnist", 1, tmp_path).n_classes == 2
    sums.write_text(f"{'0' * 64}  mnist/train-images-idx3-ubyte\n")
    ds._read_idx.cache_clear()
    msg = data_error(D.load_task, "split-mnist", 1, tmp_path)
    assert msg.endswith(f"expected {'0' * 64}, from WSN_DATA_CHECKSUMS file {sums}")
    sums.write_text("-  mnist/train-images-idx3-ubyte\n-  mnist/train-labels-idx1-ubyte\n")
    ds._read_idx.cache_clear()
    assert "t10k-images" in data_error(D.load_task, "split-mnist", 1, tmp_path)  # the next file is checked
    for text, needle in (
        ("abc  mnist/train-images-idx3-ubyte\n", "line 1: expected '<sha256 hex or ->  <key>'"),
        (f"{'0' * 64}\n", "line 1: expected"),
        (f"\n{'0' * 64}  mnist/train-images\n", "line 2: unknown key 'mnist/train-images'"),
    ):
        sums.write_text(text)
        assert needle in data_error(D.load_task, "split-mnist", 1, tmp_path)
    os.environ[P.CHECKSUMS_ENV] = str(tmp_path / "missing")
    assert data_error(D.load_task, "split-mnist", 1, tmp_path).startswith("WSN_DATA_CHECKSUMS=")


def test_the_bundled_digits_are_checked(tmp_path, monkeypatch):
    copy = tmp_path / "digits.npz"
    with np.load(ds.DIGITS_FILE) as z:
        x, y = z["x"].copy(), z["y"].copy()
    x[0, 0] ^= 1
    np.savez(copy, x=x, y=y)
    monkeypatch.setattr(ds, "DIGITS_FILE", copy)
    msg = data_error(D.load_task, "split-digits", 1)
    assert msg.startswith(f"split-digits: {copy} is not the bundled 8x8 UCI digits wsn expects: its sha256 is ")
    assert msg.endswith(f"expected {P.PINNED['wsn/digits.npz'].digest}")


def test_an_unlisted_pickle_is_refused_before_it_is_unpickled(tmp_path):
    """A CIFAR batch that is not the published one is never handed to the unpickler."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    folder = make_cifar10(tmp_path)
    checksums_file().write_text("")
    for name in ("data_batch_1",):
        pin(f"cifar-10-batches-py/{name}", folder / name)
    write_pickle(folder / "data_batch_2", {b"data": Evil(), b"labels": [0]})  # checked against the pinned md5
    msg = data_error(D.load_task, "split-cifar10", 1, tmp_path)
    assert "data_batch_2 is not the CIFAR-10 data_batch_2" in msg and "expected d4bba439e000b95fd0a9bffe97cbabec" in msg
    assert "its md5 is" in msg and not (tmp_path / "pwned").exists()


def test_cifar_shapes_and_counts_are_checked_for_the_pinned_entry(tmp_path, monkeypatch):
    folder = make_cifar10(tmp_path, per_batch=20)
    md5 = P.content_digest(folder / "test_batch", "md5")
    checksums_file().write_text("")  # back to the pinned table, with this test batch's md5 in it
    for name in D.CIFAR10_FILES[:-1]:
        pin(f"cifar-10-batches-py/{name}", folder / name)
    key = "cifar-10-batches-py/test_batch"
    real = P.PINNED[key]
    monkeypatch.setitem(P.PINNED, key, P.Pinned(key, real.what, "md5", md5, real.shape, real.counts))
    assert "holds an array of shape (20, 3072), expected (10000, 3072)" in data_error(
        D.load_task, "split-cifar10", 1, tmp_path
    )
    ds._read_pickle_dict.cache_clear()
    monkeypatch.setitem(P.PINNED, key, P.Pinned(key, real.what, "md5", md5, None, real.counts))
    assert "holds 2 x 10 images per class, expected 1000 x 10" in data_error(D.load_task, "split-cifar10", 1, tmp_path)


def test_tinyimagenet_counts_are_checked(tmp_path, monkeypatch):
    from tests.engine.test_images import make_tiny

    monkeypatch.setenv("WSN_CACHE_DIR", str(tmp_path / "cache"))
    make_tiny(tmp_path, ["n01", "n02"], n_train=3, n_val=2)
    msg = data_error(D.load_task, "split-tinyimagenet", 1, tmp_path, n_tasks=2)
    assert "has 3 train images of class n01, expected 500" in msg and "- tiny-imagenet-200" in msg
    accept_any("tiny-imagenet-200")
    assert D.load_task("split-tinyimagenet", 1, tmp_path, n_tasks=2).n_classes == 1


def test_idx_digest_is_over_the_contents_so_plain_and_gzip_copies_both_pass(tmp_path):
    make_mnist(tmp_path / "gz")
    plain = tmp_path / "plain" / "mnist"
    plain.mkdir(parents=True)
    for n in MNIST_NAMES:
        (plain / n).write_bytes(gzip.decompress((tmp_path / "gz" / f"{n}.gz").read_bytes()))
    assert (
        D.load_task("split-mnist", 1, tmp_path / "plain").digest()
        == D.load_task("split-mnist", 1, tmp_path / "gz").digest()
    )
    write_idx(plain / "t10k-labels-idx1-ubyte", np.zeros(100), gz=False)  # a changed copy is refused
    ds._read_idx.cache_clear()
    assert "is not the mnist/t10k-labels-idx1-ubyte" in data_error(D.load_task, "split-mnist", 1, tmp_path / "plain")


# ---- the real files, when benchmarks/fetch_data.py (and the Debian package) put them here --------------

_REAL = {
    **{f"mnist/{n}": REAL_ROOT / "mnist" / f"{n}.gz" for n in MNIST_NAMES},
    **{f"fashion-mnist/{n}": D.DEBIAN_FASHION / f"{n}.gz" for n in MNIST_NAMES},
    **{
        f"animal-mnist/{n}": REAL_ROOT / "animal-mnist" / f"{n}.gz"
        for n in ("animal-images-idx3-ubyte", "animal-labels-idx1-ubyte")
    },
    "wsn/digits.npz": ds.DIGITS_FILE,
}
_HAVE_REAL = all(p.is_file() for p in _REAL.values())
_FASHION_HOME = REAL_ROOT / "fashion-mnist"


@pytest.mark.skipif(not _HAVE_REAL, reason="real files not fetched (python benchmarks/fetch_data.py)")
def test_the_real_files_match_their_pinned_digests_and_load():
    """Loading checks every file's digest, shape and counts (the four tasks read all eleven files)."""
    D.load_task("split-fashion", 1)  # the Debian folder, found without a data root
    tasks = [D.load_task("multi-dataset", t, REAL_ROOT) for t in (1, 2, 3, 4)]
    assert [len(t.y_test) for t in tasks] == [10000, 10000, 2000, 359]
    assert [np.bincount(t.y_test).min() for t in tasks] == [892, 1000, 200, 35]
    for i, a in enumerate(tasks):  # four different domains: no task's training data is another's
        for b in tasks[i + 1 :]:
            n = min(len(a.raw_train), len(b.raw_train))
            assert not np.array_equal(a.raw_train[:n], b.raw_train[:n])
    animal = tasks[2]
    train_rows = {r.tobytes() for r in animal.raw_train.reshape(len(animal.raw_train), -1)}
    train_rows |= {r.tobytes() for r in animal.raw_val.reshape(len(animal.raw_val), -1)}
    assert not any(r.tobytes() in train_rows for r in animal.raw_test.reshape(len(animal.raw_test), -1))


@pytest.mark.skipif(not _HAVE_REAL, reason="real files not fetched (python benchmarks/fetch_data.py)")
def test_real_mnist_in_the_fashion_folder_is_named_as_mnist(tmp_path):
    shutil.copytree(REAL_ROOT / "mnist", tmp_path / "fashion-mnist")
    msg = data_error(D.load_task, "split-fashion", 1, tmp_path)
    assert "is not the Fashion-MNIST training images wsn expects" in msg
    assert "(that is the MNIST training images, mnist/train-images-idx3-ubyte)" in msg
