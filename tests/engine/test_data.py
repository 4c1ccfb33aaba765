"""Data layer: every benchmark's file layout (generated small), splits, and every DataError."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.datafiles import accept_any, pin
from wsncli.engine.data import loaders as L
from wsncli.engine.data import readers as ds
from wsncli.engine.data import registry as D
from wsncli.errors import DataError, FieldError

MNIST_NAMES = D.MNIST_FILES


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv("WSN_DATA_ROOT", raising=False)


# ---- generators for the real layouts ------------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray, gz: bool = True, key: str | None = None) -> Path:
    """An IDX file (gzipped by default); `key`: list its digest in $WSN_DATA_CHECKSUMS (tests/datafiles.py)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    if key is not None:
        pin(key, path)
    return path


def make_mnist(folder: Path, n_train=300, n_test=100, gz=True, size=(28, 28), seed=0, dataset="mnist") -> dict:
    """MNIST-style IDX files of random pixels, labels 0..9 in turn, accepted as `dataset`'s files."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{split}-{kind}-ubyte"
            write_idx(folder / name, arr, gz, key=f"{dataset}/{name}" if dataset else None)
        out[split] = (x, y)
    return out


def write_pickle(path: Path, obj, key: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    if key is not None:
        pin(key, path)


def make_cifar10(root: Path, per_batch=20, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    for name in D.CIFAR10_FILES:
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        batch = {b"data": x, b"labels": [i % 10 for i in range(per_batch)], b"batch_label": b"x"}
        write_pickle(folder / name, batch, f"cifar-10-batches-py/{name}")
    return folder


def make_cifar100(root: Path, n_train=400, n_test=200, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batch = {b"data": x, b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [0] * n}
        write_pickle(folder / name, batch, f"cifar-100-python/{name}")
    return folder


def npz_task(folder: Path, name: str, n_train=50, n_test=20, labels=(3, 7, 11), shape=(6,), seed=0, **override) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.normal(size=(n_train, *shape)).astype(np.float32),
        "y_train": np.array([labels[i % len(labels)] for i in range(n_train)], dtype=np.int64),
        "x_test": rng.normal(size=(n_test, *shape)).astype(np.float32),
        "y_test": np.array([labels[i % len(labels)] for i in range(n_test)], dtype=np.int64),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, **arrays)
    return folder / name


def data_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


# ---- registry, root resolution -------------------------------------------------------------------


def test_registry_and_defaults():
    assert D.BENCHMARKS == (
        "split-digits",
        "pmnist",
        "split-mnist",
        "split-fashion",
        "split-cifar10",
        "split-cifar100",
        "split-tinyimagenet",
        "multi-dataset",
        "npz",
        "image-folder",
    )
    digits = D.benchmark_info("split-digits")
    assert (digits.n_tasks, digits.task_ids, digits.input_shape, digits.default_arch) == (
        5,
        (1, 2, 3, 4, 5),
        (64,),
        "mlp",
    )
    pm = D.benchmark_info("pmnist")
    assert (pm.n_tasks, pm.input_shape, pm.default_epochs, pm.default_batch_size, pm.val_fraction) == (
        10,
        (784,),
        5,
        10,
        0.1,
    )
    assert D.benchmark_info("pmnist", n_tasks=3).task_ids == (1, 2, 3)
    c100 = D.benchmark_info("split-cifar100")
    assert (c100.n_tasks, c100.input_shape, c100.default_arch, c100.val_fraction) == (10, (3, 32, 32), "conv", 0.05)
    assert D.benchmark_info("split-mnist").input_shape == (1, 28, 28)


def test_resolve_data_root(monkeypatch, tmp_path):
    assert D.resolve_data_root(None) is None
    monkeypatch.setenv("WSN_DATA_ROOT", str(tmp_path))
    assert D.resolve_data_root(None) == tmp_path
    assert D.resolve_data_root(Path("/elsewhere")) == Path("/elsewhere")
    monkeypatch.setenv("WSN_DATA_ROOT", "")
    assert D.resolve_data_root(None) is None


def test_unknown_benchmark_bad_task_and_n_tasks():
    assert "split-digits" in data_error(D.load_task, "mnist-ish", 1)
    assert "1..5" in data_error(D.load_task, "split-digits", 6)
    data_error(D.load_task, "split-digits", 0)
    data_error(D.load_task, "split-digits", True)
    for name, n_tasks in (("split-mnist", 6), ("pmnist", 0)):  # a request field out of range: usage, exit 2
        with pytest.raises(FieldError, match=f"n_tasks must be an integer from 1 to .* for {name}"):
            D.benchmark_info(name, n_tasks=n_tasks)


# ---- split-digits --------------------------------------------------------------------------------


def test_digits_tasks_shapes_labels_and_fixed_splits():
    x_all, y_all = ds.digits_arrays()
    for task in (1, 3, 5):
        d = D.load_task("split-digits", task)
        assert d.classes == (2 * task - 2, 2 * task - 1) and d.n_classes == 2 and d.input_shape == (64,)
        assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
        assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
        assert set(np.unique(d.y_test)) == {0, 1}
        total = int(np.isin(y_all, d.classes).sum())
        assert len(d.y_train) + len(d.y_val) + len(d.y_test) == total
        assert abs(len(d.y_test) / total - 0.2) < 0.01 and abs(len(d.y_val) / (total - len(d.y_test)) - 0.1) < 0.02
    # independent of any global seed, and the same in a second load
    np.random.seed(123)
    a = D.load_task("split-digits", 2)
    np.random.seed(999)
    b = D.load_task("split-digits", 2)
    assert a.digest() == b.digest() and np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    assert a.digest() != D.load_task("split-digits", 3).digest()


def test_stratified_split_deterministic_and_keeps_each_class():
    y = np.array([0] * 30 + [1] * 10 + [2] * 1)
    keep, held = D.stratified_split(y, 0.2, seed=5)
    keep2, held2 = D.stratified_split(y, 0.2, seed=5)
    assert np.array_equal(held, held2) and np.array_equal(keep, keep2)
    assert np.bincount(y[held], minlength=3).tolist() == [6, 2, 0]
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(y)))
    assert not np.array_equal(held, D.stratified_split(y, 0.2, seed=6)[1])


# ---- MNIST-style IDX: pmnist, split-mnist, split-fashion ---------------------------------------------


def test_pmnist_permutation_fixed_per_task_and_distinct(tmp_path):
    raw = make_mnist(tmp_path / "mnist")
    t1 = D.load_task("pmnist", 1, tmp_path)
    t2 = D.load_task("pmnist", 2, tmp_path)
    assert t1.x_train.shape == (270, 784) and t1.x_val.shape == (30, 784) and t1.x_test.shape == (100, 784)
    assert t1.classes == tuple(range(10))
    perm1 = D.pmnist_permutation(1)
    assert not np.array_equal(perm1, np.arange(784))  # task 1 is permuted too
    x_test, y_test = raw["t10k"]
    expected = (x_test.reshape(100, 784)[:, perm1].astype(np.float32) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(t1.x_test, expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(t1.y_test, y_test)
    assert not np.array_equal(t1.x_test, t2.x_test) and np.array_equal(t1.y_test, t2.y_test)
    again = D.load_task("pmnist", 2, tmp_path, n_tasks=20)
    assert again.digest() == t2.digest() and np.array_equal(again.x_val, t2.x_val)
    assert "1..3" in data_error(D.load_task, "pmnist", 4, tmp_path, n_tasks=3)


def test_idx_files_are_cached_per_process_and_reread_when_changed(tmp_path):
    make_mnist(tmp_path / "mnist", seed=1)
    D.load_task("pmnist", 1, tmp_path)
    hits = ds._read_idx.cache_info().hits
    D.load_task("pmnist", 2, tmp_path)
    assert ds._read_idx.cache_info().hits >= hits + 4
    before = D.load_task("pmnist", 1, tmp_path).digest()
    make_mnist(tmp_path / "mnist", seed=2)
    img = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert D.load_task("pmnist", 1, tmp_path).digest() != before


def test_split_mnist_plain_idx_in_root_maps_labels(tmp_path):
    raw = make_mnist(tmp_path, gz=False)
    d = D.load_task("split-mnist", 2, tmp_path)
    assert d.classes == (2, 3) and d.input_shape == (1, 28, 28) and d.x_test.shape == (20, 1, 28, 28)
    x_test, y_test = raw["t10k"]
    sel = np.isin(y_test, (2, 3))
    assert np.array_equal(d.y_test, (y_test[sel] == 3).astype(np.int64))
    np.testing.assert_allclose(d.x_test[:, 0], (x_test[sel] / 255 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)


def test_fashion_found_in_debian_folder_without_data_root(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    make_mnist(debian, n_train=200, dataset="fashion-mnist")
    monkeypatch.setattr(L, "DEBIAN_FASHION", debian)
    d = D.load_task("split-fashion", 3)
    assert d.classes == (4, 5) and d.input_shape == (1, 28, 28) and len(d.y_train) + len(d.y_val) == 40
    # <root>/fashion-mnist/ wins over the Debian folder
    make_mnist(tmp_path / "root" / "fashion-mnist", n_train=500, dataset="fashion-mnist")
    assert len(D.load_task("split-fashion", 3, tmp_path / "root").y_train) + len(d.y_val) > 40 + 50


@pytest.mark.skipif(
    not (D.DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)
def test_real_debian_fashion_mnist_is_found():
    d = D.load_task("split-fashion", 1)
    assert len(d.y_train) + len(d.y_val) == 12000 and len(d.y_test) == 2000 and abs(float(d.x_train.mean())) < 0.5


def test_missing_mnist_names_files_folders_and_options(tmp_path):
    msg = data_error(D.load_task, "pmnist", 1, tmp_path)
    for needle in (*MNIST_NAMES, str(tmp_path / "mnist"), "--data-root", "WSN_DATA_ROOT"):
        assert needle in msg
    assert "--data-root DIR" in data_error(D.load_task, "split-mnist", 1, None)
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    partial = data_error(D.load_task, "split-mnist", 1, tmp_path)
    assert (
        "lacks" in partial and "t10k-labels-idx1-ubyte" in partial and "train-images" not in partial.split("lacks")[1]
    )
    assert "not a folder" in data_error(D.load_task, "pmnist", 1, tmp_path / "nope")


def test_bad_idx_files(tmp_path):
    accept_any(*(f"mnist/{n}" for n in MNIST_NAMES))  # the parser's own checks, whatever the digest
    make_mnist(tmp_path / "a", size=(20, 20))
    assert "28x28" in data_error(D.load_task, "split-mnist", 1, tmp_path / "a")
    make_mnist(tmp_path / "b")
    write_idx(tmp_path / "b" / "t10k-labels-idx1-ubyte", np.zeros(99))
    assert "99 labels" in data_error(D.load_task, "split-mnist", 1, tmp_path / "b")
    make_mnist(tmp_path / "c")
    (tmp_path / "c" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"PK\x03\x04 not idx"))
    assert "not an IDX file" in data_error(D.load_task, "split-mnist", 1, tmp_path / "c")
    make_mnist(tmp_path / "d")
    good = gzip.decompress((tmp_path / "d" / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(good[:-5]))
    assert "bytes of data" in data_error(D.load_task, "split-mnist", 1, tmp_path / "d")
    make_mnist(tmp_path / "e")
    write_idx(tmp_path / "e" / "t10k-labels-idx1-ubyte", np.full(100, 12))
    assert "outside 0..9" in data_error(D.load_task, "split-mnist", 1, tmp_path / "e")


# ---- CIFAR -----------------------------------------------------------------------------------------


def test_cifar10_layout_shapes_and_per_channel_normalisation(tmp_path):
    folder = make_cifar10(tmp_path)
    test = pickle.loads((folder / "test_batch").read_bytes())
    d = D.load_task("split-cifar10", 2, tmp_path)
    assert d.classes == (2, 3) and d.input_shape == (3, 32, 32)
    assert len(d.y_train) + len(d.y_val) == 5 * 4 and len(d.y_test) == 4
    rows = np.flatnonzero(np.isin(test[b"labels"], (2, 3)))
    img = test[b"data"][rows[0]].reshape(3, 32, 32)  # channel-major: R plane, G plane, B plane
    (mr, mg, mb), (sr, sg, sb) = L.CIFAR10_NORM
    np.testing.assert_allclose(d.x_test[0, 0], (img[0] / 255 - mr) / sr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d.x_test[0, 2], (img[2] / 255 - mb) / sb, rtol=1e-5, atol=1e-5)
    assert d.y_test.tolist() == [0, 1, 0, 1]


def test_cifar100_fine_labels_ten_tasks(tmp_path):
    make_cifar100(tmp_path / "c")
    d = D.load_task("split-cifar100", 3, tmp_path / "c")
    assert d.classes == tuple(range(20, 30)) and d.n_classes == 10
    assert len(d.y_test) == 20 and sorted(set(d.y_test.tolist())) == list(range(10))
    assert d.x_train.shape[1:] == (3, 32, 32) and np.isfinite(d.x_train).all()
    assert "data_batch_1" in data_error(D.load_task, "split-cifar10", 1, tmp_path / "c")


def test_cifar_pickle_in_old_numpy_layout_loads(tmp_path):
    folder = make_cifar10(tmp_path)
    for name in D.CIFAR10_FILES:  # as numpy 1.x (and the real files) name the reconstruct function
        raw = (folder / name).read_bytes()
        assert b"numpy._core.multiarray\n_reconstruct" in raw
        (folder / name).write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
        pin(f"cifar-10-batches-py/{name}", folder / name)
    ds._read_pickle_dict.cache_clear()
    d = D.load_task("split-cifar10", 1, tmp_path)
    assert d.x_test.shape == (4, 3, 32, 32) and d.y_test.tolist() == [0, 1, 0, 1]


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
def test_cifar_pickle_with_forbidden_global_is_refused_and_not_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    folder = make_cifar10(tmp_path)
    payload = _Evil(os.system, f"touch {marker}") if kind == "os.system" else _Evil(eval, f"open({str(marker)!r}, 'w')")
    write_pickle(folder / "data_batch_3", {b"data": payload, b"labels": [0]}, "cifar-10-batches-py/data_batch_3")
    msg = data_error(D.load_task, "split-cifar10", 1, tmp_path)
    assert "refused" in msg and "data_batch_3" in msg and ("system" in msg or "eval" in msg)
    assert not marker.exists()


def test_cifar_batch_with_bad_contents(tmp_path):
    folder = make_cifar10(tmp_path)
    accept_any("cifar-10-batches-py/test_batch")
    write_pickle(folder / "test_batch", [1, 2, 3])
    assert "dict" in data_error(D.load_task, "split-cifar10", 1, tmp_path)
    write_pickle(folder / "test_batch", {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
    assert "3072" in data_error(D.load_task, "split-cifar10", 1, tmp_path)
    write_pickle(folder / "test_batch", {b"data": np.zeros((4, 3072), np.uint8)})
    assert "labels" in data_error(D.load_task, "split-cifar10", 1, tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    assert "test_batch" in data_error(D.load_task, "split-cifar10", 1, tmp_path)


# ---- npz ---------------------------------------------------------------------------------------------


def test_npz_tasks_label_mapping_and_inputs_as_given(tmp_path):
    p1 = npz_task(tmp_path, "task1.npz", labels=(3, 7, 11))
    npz_task(tmp_path, "task_2.npz", labels=(-1, 40), seed=1)
    info = D.benchmark_info("npz", tmp_path)
    assert info.task_ids == (1, 2) and info.input_shape is None and info.default_arch == "mlp" and info.standardize
    d = D.load_task("npz", 1, tmp_path, standardize_inputs=False)
    assert d.classes == (3, 7, 11) and d.n_classes == 3
    with np.load(p1) as z:
        np.testing.assert_array_equal(d.x_test, z["x_test"])
        assert d.y_test.tolist() == [[3, 7, 11].index(v) for v in z["y_test"]]
    assert len(d.y_val) == 6 and len(d.y_train) == 44
    assert D.load_task("npz", 2, tmp_path).classes == (-1, 40)
    assert "1..2" in data_error(D.load_task, "npz", 3, tmp_path)
    npz_task(tmp_path / "gaps", "task2.npz")
    npz_task(tmp_path / "gaps", "task_5.npz")
    assert D.benchmark_info("npz", tmp_path / "gaps").task_ids == (2, 5)
    assert "2, 5" in data_error(D.load_task, "npz", 1, tmp_path / "gaps")


def test_npz_val_arrays_and_uint8_images(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(30, 1, 4, 4), dtype=np.uint8)
    npz_task(
        tmp_path,
        "task1.npz",
        shape=(1, 4, 4),
        labels=(0, 1),
        x_train=imgs,
        y_train=np.arange(30) % 2,
        x_test=imgs[:10],
        y_test=np.arange(10) % 2,
        x_val=imgs[:4],
        y_val=np.array([1, 0, 1, 0]),
    )
    d = D.load_task("npz", 1, tmp_path, standardize_inputs=False)
    assert d.input_shape == (1, 4, 4) and len(d.y_train) == 30 and d.y_val.tolist() == [1, 0, 1, 0]
    assert d.x_train.dtype == np.float32 and np.array_equal(d.x_train, (imgs.astype(np.float32) / np.float32(255)))
    assert d.raw_train.dtype == np.uint8  # kept as stored until it becomes network inputs


def test_npz_ambiguous_and_missing_files(tmp_path):
    assert "--data-root" in data_error(D.benchmark_info, "npz")
    assert "task<T>.npz" in data_error(D.load_task, "npz", 1, tmp_path)
    npz_task(tmp_path, "task1.npz")
    npz_task(tmp_path, "task_1.npz")
    assert "two files" in data_error(D.load_task, "npz", 1, tmp_path)


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"x_train": np.full((50, 6), np.nan, np.float32)}, "NaN"),
        ({"x_test": np.where(np.arange(120).reshape(20, 6) == 7, np.inf, 0.0)}, "infinite"),
        ({"x_train": np.zeros((0, 6), np.float32), "y_train": np.zeros(0, np.int64)}, "empty"),
        ({"x_test": np.zeros((0, 6), np.float32), "y_test": np.zeros(0, np.int64)}, "test set is empty"),
        ({"y_test": np.full(20, 5)}, "test labels {5}"),
        ({"x_test": np.zeros((20, 7), np.float32)}, "shape"),
        ({"y_train": np.zeros(49, np.int64)}, "49 labels"),
        ({"y_test": None}, "lacks array(s) y_test"),
        ({"y_train": np.zeros(50, np.float32)}, "must be integers"),
        ({"x_train": np.array(["a"] * 50).reshape(50, 1)}, "real numbers"),
        ({"x_val": np.zeros((3, 6), np.float32)}, "y_val"),
    ],
)
def test_npz_bad_data_is_a_data_error(tmp_path, override, needle):
    npz_task(tmp_path, "task1.npz", **override)
    msg = data_error(D.load_task, "npz", 1, tmp_path)
    assert needle in msg and "task1.npz" in msg


def test_npz_pickled_arrays_and_non_npz_files(tmp_path):
    np.savez(
        tmp_path / "task3.npz",
        x_train=np.array([{"a": 1}] * 3, dtype=object),
        y_train=np.zeros(3),
        x_test=np.zeros((1, 6)),
        y_test=np.zeros(1),
    )
    assert "task3.npz: member 'x_train.npy' holds Python objects (pickles), which wsn never loads" in data_error(
        D.load_task, "npz", 3, tmp_path
    )
    (tmp_path / "task4.npz").write_bytes(b"x,y\n1,2\n")  # a text file named .npz
    assert "task4.npz: not an npz file (numpy's zip of arrays, written by np.savez)" in data_error(
        D.load_task, "npz", 4, tmp_path
    )


def test_digest_changes_with_test_data(tmp_path):
    npz_task(tmp_path / "a", "task1.npz")
    y = np.array([[3, 7, 11][i % 3] for i in range(20)])
    y[0] = 7
    npz_task(tmp_path / "b", "task1.npz", y_test=y)
    a, b = D.load_task("npz", 1, tmp_path / "a"), D.load_task("npz", 1, tmp_path / "b")
    assert len(a.digest()) == 64 and a.digest() != b.digest()
    assert np.array_equal(a.x_test, b.x_test)
