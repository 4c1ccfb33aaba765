"""Tabular (npz) sequences: per-task biases (on by default for npz), tasks with fewer features than the
network zero-padded with the padding stored per task, both forget-free and carried by predict and
both exports; the warning when validation stays at chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from tests.cli.test_use_tasks import _without_wsn
from wsncli.engine.data.registry import TaskData
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.training.loop import EpochStats, TrainResult
from wsncli.engine.usecases.learn import chance_warning
from wsncli.engine.usecases.outputs import subnet_digest

FEATURES = {1: 6, 2: 4}  # task 2 has fewer features than the network (set by task 1)


def _task(rng: np.random.Generator, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) + 2.0 * y[:, None] * (np.arange(d) % 2)[None]  # (n, d), odd features say the class
    return x, np.asarray([3, 9])[y]


@pytest.fixture(scope="module")
def tabular(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)
    for t, d in FEATURES.items():
        (xtr, ytr), (xte, yte) = _task(rng, d, 80), _task(rng, d, 30)
        np.savez(root / f"task{t}.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    ckpt = root / "m.pt"
    for t in FEATURES:
        assert_ok(
            wsn("train-task", "-c", ckpt, "-t", t, "--benchmark", "npz", "--data-root", root, "--epochs", 3, "-q")
        )
    return root


def test_npz_checkpoints_get_per_task_biases_stored_per_task_and_in_the_digest(tabular):
    ckpt = load_checkpoint(tabular / "m.pt")
    assert ckpt.meta.model.bias and ckpt.meta.model.input_shape == [6]
    layers = ckpt.model.subnet_layers()
    for t in FEATURES:
        biases = list(ckpt.model.task_biases[str(t)])
        assert [tuple(b.shape) for b in biases] == [(layer.weight.shape[0],) for layer in layers.values()]
        assert all(b.abs().sum() > 0 for b in biases), "a task's biases never trained"
    record = ckpt.task_record(1)
    assert subnet_digest(ckpt.model, 1, ckpt.masks[1], ckpt.preps[1]) == record.subnet_digest
    with torch.no_grad():
        ckpt.model.task_biases["1"][0][0] += 1.0
    assert subnet_digest(ckpt.model, 1, ckpt.masks[1], ckpt.preps[1]) != record.subnet_digest


def test_inspect_says_the_network_has_per_task_biases(tabular):
    assert json_out(wsn("inspect", tabular / "m.pt", "--json"))["model"]["bias"] is True
    assert "mlp 6 hidden 100-100 with per-task biases" in wsn("inspect", tabular / "m.pt").stdout


def test_a_task_with_fewer_features_is_zero_padded_and_eval_proves_every_task(tabular):
    ckpt = load_checkpoint(tabular / "m.pt")
    assert ckpt.preps[1].padding == 0 and ckpt.preps[2].padding == 2
    assert ckpt.task_record(2).preprocess.padding == 2
    doc = json_out(wsn("eval", "-c", tabular / "m.pt", "--data-root", tabular, "--json"))
    assert doc["forget_free"] is True
    assert [t["accuracy"] for t in doc["tasks"]] == [ckpt.task_record(t).accuracy for t in FEATURES]


def test_predict_takes_the_tasks_own_feature_count(tabular, tmp_path):
    x = np.load(tabular / "task2.npz")["x_test"]
    np.save(tmp_path / "x2.npy", x)
    doc = json_out(wsn("predict", tmp_path / "x2.npy", "-c", tabular / "m.pt", "-t", 2, "--json"))
    truth = np.load(tabular / "task2.npz")["y_test"]
    assert np.mean(np.asarray(doc["predictions"]) == truth) == load_checkpoint(tabular / "m.pt").task_record(2).accuracy
    np.save(tmp_path / "x6.npy", np.zeros((3, 6)))
    assert_error(wsn("predict", tmp_path / "x6.npy", "-c", tabular / "m.pt", "-t", 2), 1, "(6,)", "takes (4,)")


@pytest.mark.parametrize("suffix", [".pt2", ".safetensors"])
def test_exports_of_a_padded_task_with_biases_agree_with_predict_bit_for_bit(tabular, tmp_path, suffix):
    x = tmp_path / "x.npy"
    np.save(x, np.load(tabular / "task2.npz")["x_test"][:12])
    out = tmp_path / f"t2{suffix}"
    assert_ok(wsn("export", "-c", tabular / "m.pt", "-t", 2, "-o", out))
    logits = _without_wsn(suffix[1:], out, x)
    predicted = json_out(wsn("predict", x, "-c", tabular / "m.pt", "-t", 2, "--proba", "--json"))
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy().astype(np.float32)
    assert np.array_equal(probs, np.asarray(predicted["probabilities"], np.float32))


def test_a_wider_later_task_and_a_changed_bias_setting_are_refused(tabular, tmp_path):
    import shutil

    ckpt = tmp_path / "m.pt"
    shutil.copyfile(tabular / "m.pt", ckpt)
    rng = np.random.default_rng(1)
    (xtr, ytr), (xte, yte) = _task(rng, 9, 40), _task(rng, 9, 10)
    root = tmp_path / "data"
    shutil.copytree(tabular, root, ignore=shutil.ignore_patterns("*.pt"))
    np.savez(root / "task3.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    assert_error(
        wsn("train-task", "-c", ckpt, "-t", 3, "--data-root", root, "--epochs", 1, "-q"),
        1,
        "task 3 inputs have 9 features, the checkpoint's network takes 6",
        "learn the widest task first",
    )
    assert_error(wsn("train-task", "-c", ckpt, "-t", 3, "--no-bias", "-q"), 2, "made with per-task bias on, not off")


def _result(train: list[float], val: list[float]) -> TrainResult:
    history = [EpochStats(i + 1, 0.1, a, 0.7, v, i == 0) for i, (a, v) in enumerate(zip(train, val))]
    return TrainResult(None, 1, history)


def _data(y_val: list[int]) -> TaskData:
    from wsncli.engine.data.preprocess import scaled

    empty = np.zeros((0, 2), np.float32)
    y = np.asarray(y_val, np.int64)
    return TaskData("npz", 1, (0, 1), empty, y[:0], np.zeros((len(y), 2), np.float32), y, empty, y[:0], scaled(1.0))


def test_the_warning_when_validation_stays_at_chance_while_training_accuracy_is_high():
    data = _data([0, 1, 1, 0])  # chance: 50%
    (message,) = chance_warning(2, _result([0.6, 1.0], [0.5, 0.25]), data)
    assert message.startswith("task 2: training accuracy reached 100.00% but validation accuracy stayed at chance")
    assert chance_warning(2, _result([0.6, 1.0], [0.5, 0.75]), data) == []  # one epoch beat chance
    assert chance_warning(2, _result([0.6, 0.8], [0.5, 0.5]), data) == []  # training accuracy not high
    assert chance_warning(2, _result([1.0], [0.75]), _data([1, 1, 1, 0])) != []  # chance is the majority share


def test_per_benchmark_defaults_are_documented_as_the_registry_has_them():
    from wsncli.engine.data.registry import _SPECS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "DATA.md").read_text()
    section = doc.split("## Per-benchmark defaults")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `"):
            for name in cells[0].replace("`", "").split(", "):
                rows[name] = cells[1:]
    assert set(rows) == set(_SPECS)
    for name, spec in _SPECS.items():
        on = {True: "on", False: "off"}
        want = [str(spec.epochs), str(spec.batch), f"{spec.val * 100:g}%", on[spec.standardize], on[spec.bias]]
        assert rows[name] == want, name


def test_files_using_no_new_field_are_written_as_before(tabular, digits_ckpt):
    import json

    from tests.ckpt_tools import read_parts

    plain = json.loads(read_parts(digits_ckpt)[0]["meta"])
    assert "bias" not in plain["model"] and all("padding" not in t["preprocess"] for t in plain["tasks"])
    used = json.loads(read_parts(tabular / "m.pt")[0]["meta"])
    assert used["model"]["bias"] is True and [t["preprocess"].get("padding") for t in used["tasks"]] == [None, 2]
