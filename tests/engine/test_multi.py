"""multi-dataset: four domains in a fixed order from generated files in the real layouts; its splits,
the digits' upsampling, --train-limit, and the sequence end to end through the CLI for three networks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli.helpers import assert_error, json_out, wsn
from tests.engine.test_data import data_error, make_mnist, write_idx
from wsncli.engine.data import multi
from wsncli.engine.data import readers as ds
from wsncli.engine.data import registry as D
from wsncli.engine.data.splits import grouped_stratified_split, split_seed, stratified_subset

ANIMAL_PER_CLASS = 10


def make_animal(folder, per_class=ANIMAL_PER_CLASS, seed=0, duplicates=3):
    """Animal-MNIST's layout: one set of images and labels (class 0 holds `duplicates` exact copies)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), per_class).astype(np.uint8)
    x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
    x[1 : 1 + duplicates] = x[0]  # the real set has 284 such pairs
    for name, arr in zip(multi.ANIMAL_FILES, (x, y)):
        write_idx(folder / name, arr, key=f"animal-mnist/{name}")
    return x, y


@pytest.fixture
def multi_root(tmp_path):
    """DIR/mnist, DIR/fashion-mnist, DIR/animal-mnist: small generated sets, each listed as its dataset."""
    make_mnist(tmp_path / "mnist", n_train=120, n_test=40, seed=1)
    make_mnist(tmp_path / "fashion-mnist", n_train=120, n_test=40, seed=2, dataset="fashion-mnist")
    make_animal(tmp_path / "animal-mnist")
    return tmp_path


def test_four_tasks_in_order_ten_classes_each(multi_root):
    info = D.benchmark_info("multi-dataset")
    assert info.task_ids == (1, 2, 3, 4) and info.input_shape == (1, 28, 28) and info.default_arch == "resnet18"
    tasks = [D.load_task("multi-dataset", t, multi_root) for t in info.task_ids]
    assert [t.classes for t in tasks] == [tuple(range(10))] * 4
    assert [len(t.y_test) for t in tasks] == [40, 40, 20, 359]  # MNIST/Fashion t10k; 20% of Animal and digits
    assert all(t.input_shape == (1, 28, 28) and t.raw_train.dtype == np.uint8 for t in tasks)
    assert all(t.prep.standardized for t in tasks)  # per-task statistics of its own training split
    mnist = ds.read_idx(multi_root / "mnist" / "t10k-images-idx3-ubyte.gz")
    assert np.array_equal(tasks[0].raw_test[:, 0], mnist)  # task 1 is MNIST, task 2 is not
    assert not np.array_equal(tasks[1].raw_test[:, 0], mnist)
    padded = D.load_task("multi-dataset", 3, multi_root, options=D.DataOptions(image_size=32))
    assert padded.input_shape == (1, 32, 32) and np.array_equal(padded.raw_test[:, :, 2:30, 2:30], tasks[2].raw_test)


def test_animal_and_digits_test_splits_are_fixed_stratified_and_keep_duplicates_together(multi_root):
    x, _ = make_animal(multi_root / "animal-mnist")
    a = D.load_task("multi-dataset", 3, multi_root)
    assert np.bincount(a.y_test).tolist() == [2] * 10  # 20% of 10 per class
    held = {r.tobytes() for r in a.raw_test[:, 0]}
    kept = {r.tobytes() for r in np.concatenate([a.raw_train, a.raw_val])[:, 0]}
    assert not held & kept and x[0].tobytes() in held | kept
    again = D.load_task("multi-dataset", 3, multi_root, options=D.DataOptions(train_limit=5))
    assert np.array_equal(again.raw_test, a.raw_test)  # the test split never depends on training options


def test_grouped_split_never_separates_copies():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 50)
    x = rng.integers(0, 4, size=(150, 2)) + 10 * y[:, None]  # 16 distinct rows per class, many copies
    keep, held = grouped_stratified_split(y, x, 0.2, seed=7)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(150))
    assert not {r.tobytes() for r in x[held]} & {r.tobytes() for r in x[keep]}
    assert all(np.isin(np.arange(3), y[keep]))  # every class keeps training samples
    again = grouped_stratified_split(y, x, 0.2, seed=7)
    assert np.array_equal(again[1], held) and not np.array_equal(grouped_stratified_split(y, x, 0.2, 8)[1], held)
    unique = np.arange(100)[:, None]
    _, held = grouped_stratified_split(np.repeat(np.arange(2), 50), unique, 0.2, seed=1)
    assert len(held) == 20


def test_stratified_subset_exact_size_in_proportion():
    y = np.repeat(np.arange(3), [60, 30, 10])
    sub = stratified_subset(y, 10, seed=3)
    assert len(sub) == 10 and np.bincount(y[sub]).tolist() == [6, 3, 1] and np.all(np.diff(sub) > 0)
    assert np.array_equal(sub, stratified_subset(y, 10, seed=3))
    assert len(stratified_subset(y, 7, seed=3)) == 7 and len(stratified_subset(y, 500, seed=3)) == 100


def test_train_limit_takes_a_fixed_subset_of_the_training_split_only(multi_root):
    full = D.load_task("multi-dataset", 1, multi_root)
    limited = D.load_task("multi-dataset", 1, multi_root, options=D.DataOptions(train_limit=50))
    assert len(limited.y_train) == 50 and np.bincount(limited.y_train).tolist() == [5] * 10
    assert np.array_equal(limited.raw_val, full.raw_val) and np.array_equal(limited.raw_test, full.raw_test)
    rows = {r.tobytes() for r in full.raw_train}
    assert all(r.tobytes() in rows for r in limited.raw_train)
    assert np.array_equal(
        D.load_task("multi-dataset", 1, multi_root, options=D.DataOptions(train_limit=50)).raw_train, limited.raw_train
    )
    assert split_seed("multi-dataset", 1, "train-limit") != split_seed("multi-dataset", 2, "train-limit")


def test_upsampled_digits_take_mnist_layout():
    x = np.zeros((2, 8, 8), np.uint8)
    x[0] = 16
    x[1, 3:5, 3:5] = 16
    up = multi.upsample_digits(x)
    assert up.shape == (2, 28, 28) and up.dtype == np.uint8
    assert (up[0, 4:24, 4:24] == 255).all() and up[0].sum() == 255 * 400  # a 20x20 box, 4-pixel border
    assert up[1].max() == 255 and up[1, 13:15, 13:15].min() == 255 and up[1, :8].max() == 0  # centred blob
    d = D.load_task("multi-dataset", 4)  # bundled: needs no data root
    assert d.raw_test.shape[1:] == (1, 28, 28) and d.raw_test[:, 0, :4].max() == 0


def test_only_each_datasets_own_folder_is_searched(tmp_path):
    make_mnist(tmp_path)  # MNIST's names at the top of DIR, where split-mnist finds them
    msg = data_error(D.load_task, "multi-dataset", 1, tmp_path)
    assert "put train-images-idx3-ubyte[.gz]" in msg and str(tmp_path / "mnist") in msg
    assert "animal-images-idx3-ubyte[.gz]" in data_error(D.load_task, "multi-dataset", 3, tmp_path)


@pytest.mark.parametrize(("arch", "tasks"), [("mlp", (1, 2, 3, 4)), ("conv", (1, 3)), ("resnet18", (2, 4))])
def test_the_sequence_end_to_end_through_the_cli(multi_root, tmp_path, arch, tasks):
    """Every domain through the CLI with the MLP; two domains each with the larger networks (time)."""
    ckpt = tmp_path / "m.pt"
    extra = ("--width", 4) if arch == "resnet18" else ("--hidden", "32-32") if arch == "mlp" else ()
    for task in tasks:
        doc = json_out(
            wsn(
                "train-task", "-t", task, "-c", ckpt, "--benchmark", "multi-dataset", "--data-root", multi_root,
                "--arch", arch, *extra, "--image-size", 32, "--train-limit", 40, "--epochs", 1, "--batch-size", 20,
                "--capacity", 0.3, "--threads", 1, "--no-matrix", "--json",
            )
        )  # fmt: skip
        assert doc["task"]["n_classes"] == 10
    report = json.loads(wsn("eval", "-c", ckpt, "--data-root", multi_root, "--json").stdout)
    assert report["forget_free"] is True and [t["task"] for t in report["tasks"]] == list(tasks)


def test_cli_refuses_a_changed_file_in_one_line(multi_root, tmp_path):
    path = multi_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(path.with_name("t10k-labels-idx1-ubyte"), np.zeros(40))  # changed after its digest was listed
    args = ("train-task", "-t", 2, "-c", tmp_path / "m.pt", "--benchmark", "multi-dataset", "--data-root", multi_root)
    assert_error(wsn(*args), 1, f"{path} is not the fashion-mnist/t10k-labels-idx1-ubyte wsn expects", "expected ")
    assert not (tmp_path / "m.pt").exists()
    assert_error(wsn(*args, "--train-limit", 0), 2, "--train-limit")


def test_cli_train_limit_reaches_the_data(multi_root, tmp_path, monkeypatch):
    from wsncli.engine.usecases import learn

    seen = []

    def spy(*args, **kwargs):
        data = D.load_task(*args, **kwargs)
        seen.append(len(data.y_train))
        return data

    monkeypatch.setattr(learn, "load_task", spy)
    args = ("train-task", "-t", 3, "-c", tmp_path / "m.pt", "--benchmark", "multi-dataset", "--data-root", multi_root)
    json_out(wsn(*args, "--arch", "mlp", "--hidden", "8", "--epochs", 1, "--train-limit", 33, "--json"))
    assert seen == [33]
