"""Real data paths end to end through the CLI: image folders (generated PNGs), TinyImageNet's layout,
tabular npz with string labels and standardisation, MNIST padded for the ResNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from tests.datafiles import accept_any
from tests.engine.test_data import make_mnist
from wsncli.engine.store.checkpoint import load_checkpoint

Image = pytest.importorskip("PIL.Image")


def _image_folder(root: Path, tasks=(1, 2), size=12, n_train=8, n_test=4) -> Path:
    """DIR/task<T>/{train,test}/<class>/*.png: per class a colour plus noise (learnable)."""
    rng = np.random.default_rng(0)
    for t in tasks:
        for c, name in enumerate((f"cat{t}", f"dog{t}")):
            colour = np.array([200, 40, 40] if c == 0 else [40, 40, 200], np.int64)
            for split, n in (("train", n_train), ("test", n_test)):
                folder = root / f"task{t}" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    pixels = np.clip(colour + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_image_folder_end_to_end_train_eval_inspect_pack_predict(tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_CACHE_DIR", str(tmp_path / "cache"))
    data, ckpt = _image_folder(tmp_path / "imgs"), tmp_path / "img.pt"
    for t in (1, 2):
        doc = json_out(
            wsn(
                "train-task",
                "-t",
                t,
                "-c",
                ckpt,
                "--benchmark",
                "image-folder",
                "--data-root",
                data,
                "--arch",
                "resnet18",
                "--width",
                4,
                "--epochs",
                2,
                "--batch-size",
                8,
                "--json",
            )
        )
        assert doc["task"]["classes"] == [f"cat{t}", f"dog{t}"] and doc["task"]["standardized"] is True
    ckpt_obj = load_checkpoint(ckpt)
    assert ckpt_obj.meta.model.input_shape == [3, 12, 12] and ckpt_obj.meta.model.width == 4
    assert ckpt_obj.preps[1].mean.shape == (3, 1, 1)  # per-channel statistics of task 1's training images
    report = json_out(wsn("eval", "-c", ckpt, "--data-root", data, "--json"))
    assert report["forget_free"] is True and [t["status"] for t in report["tasks"]] == ["proven", "proven"]
    assert json_out(wsn("inspect", ckpt, "--json"))["model"]["arch"] == "resnet18"
    assert_ok(wsn("pack-masks", "-c", ckpt, "-o", tmp_path / "m.wsnm"))
    predicted = json_out(wsn("predict", data / "task2" / "test" / "dog2", "-c", ckpt, "-t", 2, "--json"))
    assert predicted["classes"] == ["cat2", "dog2"] and predicted["n"] == 4
    assert set(predicted["predictions"]) <= {"cat2", "dog2"}
    folder = data / "task2" / "test" / "dog2"
    assert predicted["files"] == [str(folder / f"{i}.png") for i in range(4)]  # each label's file, sorted by name
    table = wsn("predict", folder, "-c", ckpt, "-t", 2)
    assert_ok(table)
    assert [line.rsplit("  ", 1) for line in table.stdout.splitlines()] == [
        [f, p] for f, p in zip(predicted["files"], predicted["predictions"])
    ]
    assert list((tmp_path / "cache").iterdir())  # decoded once, cached


def test_an_image_of_another_size_is_refused_naming_the_option(tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_CACHE_DIR", str(tmp_path / "cache"))
    data = _image_folder(tmp_path / "imgs", tasks=(1,))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "task1" / "train" / "cat1" / "odd.png")
    assert_error(
        wsn(
            "train-task",
            "-t",
            1,
            "-c",
            tmp_path / "m.pt",
            "--benchmark",
            "image-folder",
            "--data-root",
            data,
            "--arch",
            "conv4",
        ),
        1,
        "--image-size N",
    )
    assert_ok(
        wsn(
            "train-task",
            "-t",
            1,
            "-c",
            tmp_path / "m.pt",
            "--benchmark",
            "image-folder",
            "--data-root",
            data,
            "--arch",
            "conv4",
            "--image-size",
            16,
            "--epochs",
            1,
            "-q",
        )
    )
    assert load_checkpoint(tmp_path / "m.pt").meta.image_size == 16


def test_split_tinyimagenet_from_its_folder_layout(tmp_path, monkeypatch):
    accept_any("tiny-imagenet-200")  # a small copy: not the published counts
    monkeypatch.setenv("WSN_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "tiny-imagenet-200"
    wnids = [f"n0{i}" for i in range(4)]
    rng = np.random.default_rng(1)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(
                np.full((64, 64, 3), 60 * c, np.uint8) + rng.integers(0, 20, (64, 64, 3)).astype(np.uint8)
            ).save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        for i in range(2):
            name = f"val_{c}_{i}.JPEG"
            Image.fromarray(np.full((64, 64, 3), 60 * c, np.uint8)).save(root / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    ckpt = tmp_path / "tin.pt"
    doc = json_out(
        wsn(
            "train-task",
            "-t",
            2,
            "-c",
            ckpt,
            "--benchmark",
            "split-tinyimagenet",
            "--n-tasks",
            2,
            "--data-root",
            tmp_path,
            "--image-size",
            16,
            "--epochs",
            1,
            "--json",
        )
    )
    assert doc["task"]["classes"] == ["n02", "n03"] and doc["task"]["n_test"] == 4
    assert load_checkpoint(ckpt).meta.model.arch == "conv4"
    assert json_out(wsn("eval", "-c", ckpt, "--data-root", tmp_path, "--json"))["forget_free"] is True
    assert_error(
        wsn(
            "train-task",
            "-t",
            1,
            "-c",
            tmp_path / "x.pt",
            "--benchmark",
            "split-tinyimagenet",
            "--n-tasks",
            3,
            "--data-root",
            tmp_path,
        ),
        1,
        "cannot split the 4 classes",
    )


def _tabular(folder: Path, task: int, labels: list, scale: float, seed: int) -> None:
    """Two informative features on very different scales (x1000 and x0.001) and noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = 300
    y = rng.integers(0, len(labels), n)
    x = rng.normal(size=(n, 6))
    x[:, 0] += 2.0 * y
    x[:, 1] -= 2.0 * y
    x[:, 0] *= 1000 * scale
    x[:, 1] *= 0.001
    ylab = np.asarray(labels)[y]
    np.savez(folder / f"task{task}.npz", x_train=x[:240], y_train=ylab[:240], x_test=x[240:], y_test=ylab[240:])


def test_tabular_tasks_with_string_labels_are_standardised_by_default(tmp_path):
    data = tmp_path / "tab"
    _tabular(data, 1, ["low", "high"], 1.0, 0)
    _tabular(data, 2, ["a", "b", "c"], 5.0, 1)
    ckpt = tmp_path / "tab.pt"
    for t in (1, 2):
        doc = json_out(
            wsn("train-task", "-t", t, "-c", ckpt, "--benchmark", "npz", "--data-root", data, "--epochs", 10, "--json")
        )
        assert doc["task"]["standardized"] is True
    record = load_checkpoint(ckpt).task_record(1)
    assert record.classes == ["high", "low"] and record.accuracy >= 0.85  # sorted labels; learnable once standardised
    x = np.load(data / "task1.npz")["x_test"]
    np.save(tmp_path / "x.npy", x)
    predicted = json_out(wsn("predict", tmp_path / "x.npy", "-c", ckpt, "-t", 1, "--json"))
    truth = np.load(data / "task1.npz")["y_test"]
    assert np.mean(np.asarray(predicted["predictions"]) == truth) == pytest.approx(
        record.accuracy
    )  # the stored transform applied
    raw = tmp_path / "raw.pt"
    json_out(
        wsn(
            "train-task",
            "-t",
            1,
            "-c",
            raw,
            "--benchmark",
            "npz",
            "--data-root",
            data,
            "--epochs",
            10,
            "--no-standardize",
            "--json",
        )
    )
    assert load_checkpoint(raw).task_record(1).preprocess.standardized is False


def test_split_mnist_padded_to_32_for_the_resnet(tmp_path):
    make_mnist(tmp_path / "mnist", n_train=100, n_test=40)
    ckpt = tmp_path / "m.pt"
    doc = json_out(
        wsn(
            "train-task",
            "-t",
            1,
            "-c",
            ckpt,
            "--benchmark",
            "split-mnist",
            "--data-root",
            tmp_path,
            "--arch",
            "resnet18",
            "--width",
            4,
            "--image-size",
            32,
            "--epochs",
            1,
            "--json",
        )
    )
    assert doc["task"]["classes"] == [0, 1]
    ck = load_checkpoint(ckpt)
    assert ck.meta.model.input_shape == [1, 32, 32] and ck.meta.image_size == 32
    report = json.loads(wsn("eval", "-c", ckpt, "--data-root", tmp_path, "--json").stdout)
    assert report["forget_free"] is True
