"""The `wsn` command line: train-task refusals, eval's forget-free proof, inspect, version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wsncli
from tests.ckpt_tools import edit_arrays, edit_meta
from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from tests.conftest import DIGITS_CAPACITY, DIGITS_EPOCHS, DIGITS_ORDER
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.store.lock import CheckpointLock

LAYERS = {"layers.0": 100 * 64, "layers.1": 100 * 100}  # split-digits MLP 64-100-100


# ---- train-task ----------------------------------------------------------------------------------


def test_train_task_creates_then_extends_a_checkpoint(tmp_path):
    ckpt = tmp_path / "m.pt"
    first = json_out(wsn("train-task", "--task", 1, "--ckpt", ckpt, "--epochs", 1, "--capacity", 0.2, "--json"))
    assert first["schema"] == "wsn.train-task/1" and first["checkpoint"] == str(ckpt)
    assert (
        first["created"] is True
        and first["task_ids"] == [1]
        and first["task"]["task"] == 1
        and first["task"]["order"] == 1
    )
    assert first["checkpoint_bytes"] == ckpt.stat().st_size
    assert first["task"]["kept_per_layer"] == {n: round(0.2 * w) for n, w in LAYERS.items()}
    assert 0.0 <= first["task"]["accuracy"] <= 1.0 and first["task"]["capacity"] == 0.2
    second = wsn("train-task", "--task", 2, "--ckpt", ckpt, "--epochs", 1)
    assert_ok(second)
    assert "learned task 2 (2 of 2" in second.stdout
    assert second.stderr.count("epoch 1:") == 1  # per-epoch lines go to stderr
    assert load_checkpoint(ckpt).task_record(2).capacity == 0.2  # the checkpoint's default
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no lock, temporary or snapshot left


def _refused(ckpt: Path, *args, needles=(), code=1):
    """Run train-task; it must fail with one line on stderr and leave the checkpoint as it was."""
    before = ckpt.read_bytes() if ckpt.exists() else None
    result = wsn("train-task", "--ckpt", ckpt, *args)
    assert_error(result, code, *needles)
    after = ckpt.read_bytes() if ckpt.exists() else None
    assert after == before, "a refused train-task changed the checkpoint"
    assert not [
        p for p in ckpt.parent.iterdir() if p.name != ckpt.name and p.name.startswith((ckpt.name, "." + ckpt.name))
    ]
    return result


REFUSALS = [
    (("--task", 1), 1, ("task 1 is already learned (learned 2nd of 3)",)),
    (("--task", 4, "--benchmark", "pmnist"), 2, ("checkpoint was made with benchmark 'split-digits', not 'pmnist'",)),
    (("--task", 4, "--arch", "conv"), 2, ("checkpoint was made with architecture 'mlp', not 'conv'",)),
    (("--task", 4, "--hidden", "50-50"), 2, ("hidden sizes '100-100', not '50-50'",)),
    (("--task", 4, "--method", "finetune"), 2, ("method 'wsn', not 'finetune'",)),
    (("--task", 4, "--seed", 7), 2, ("checkpoint was made with seed 0, not 7", "fixed when a checkpoint is created")),
    (("--task", 4, "--bias"), 2, ("checkpoint was made with per-task bias off, not on",)),
    (("--task", 4, "--image-size", 32), 2, ("--image-size applies to benchmark",)),
    (("--task", 4, "--width", 8), 2, ("--width applies to arch resnet18 only, not mlp",)),
    (("--task", 4, "--capacity=-0.1"), 2, ("Invalid value for '--capacity'",)),
    (("--task", 4, "--capacity", "1.5"), 2, ("Invalid value for '--capacity': must be in (0, 1], got 1.5",)),
    (("--task", 4, "--capacity", "0"), 2, ("Invalid value for '--capacity': must be in (0, 1], got 0",)),
    (("--task", 4, "--capacity", "nan"), 2, ("Invalid value for '--capacity': must be a finite number, got nan",)),
    (("--task", 4, "--lr", "inf"), 2, ("Invalid value for '--lr': must be a finite number, got inf",)),
    (("--task", 4, "--capacity", "1e-9"), 2, ("--capacity 1e-09 keeps no weight of layer 'layers.0' (6400 weights)",)),
    (("--task", 4, "--benchmark", "cifar1000"), 2, ("Invalid value for '--benchmark'", "'cifar1000' is not one of")),
    (("--task", 4, "--arch", "resnet"), 2, ("Invalid value for '--arch'",)),
    (("--task", 4, "--method", "ewc"), 2, ("Invalid value for '--method'",)),
    (("--task", 6), 1, ("split-digits has no task 6: its tasks are 1..5",)),
    (("--task", 0), 2, ("Invalid value for '--task'",)),
    (("--task", -3), 2, ("Invalid value for '--task'",)),
    (("--task", 4, "--epochs", 0), 2, ("Invalid value for '--epochs'",)),
    (("--task", 4, "--batch-size", 0), 2, ("Invalid value for '--batch-size'",)),
    (("--task", 4, "--batch-size", 2**70), 2, ("Invalid value for '--batch-size'", "16777216")),
    (("--task", 4, "--lr", "0"), 2, ("Invalid value for '--lr': must be in (0, 1000], got 0",)),
    (("--task", 4, "--lr", "1e30"), 2, ("Invalid value for '--lr': must be in (0, 1000], got 1e+30",)),
    (("--task", 4, "--channels", "2"), 2, ("--channels must be 1 or 3",)),
]


@pytest.mark.parametrize(
    ("args", "code", "needles"), [pytest.param(a, c, n, id=" ".join(map(str, a))) for a, c, n in REFUSALS]
)
def test_train_task_refusals_leave_the_checkpoint_unchanged(digits_ckpt, args, code, needles):
    _refused(digits_ckpt, *args, needles=needles, code=code)


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (("--task", 6), 1, ("split-digits has no task 6",)),
        (("--task", 1, "--n-tasks", 9), 2, ("--n-tasks must be an integer from 1 to 5 for split-digits, got 9",)),
        (("--task", 1, "--hidden", "-100"), 2, ("--hidden must be sizes like 100-100, got '-100'",)),
        (("--task", 1, "--benchmark", "nope"), 2, ("Invalid value for '--benchmark'",)),
        (("--task", 1, "--capacity", "1.5"), 2, ("--capacity",)),
        (("--task", 1, "--benchmark", "npz"), 1, ("npz needs a folder of task<T>.npz files",)),
        (("--task", 1, "--hidden", "30000-30000"), 2, ("masked weights, over the limit of 134217728",)),
        (
            ("--task", 1, "--method", "finetune", "--capacity", "0.3"),
            2,
            ("--capacity has no meaning for --method finetune",),
        ),
    ],
    ids=[
        "task-6",
        "n-tasks-9",
        "hidden-minus-100",
        "unknown-benchmark",
        "capacity-1.5",
        "npz-without-data-root",
        "too-big",
        "finetune-capacity",
    ],
)
def test_refusals_for_a_new_checkpoint_create_no_file(tmp_path, args, code, needles):
    ckpt = tmp_path / "new.pt"
    _refused(ckpt, *args, needles=needles, code=code)
    assert list(tmp_path.iterdir()) == []  # no checkpoint, lock or temporary left


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available here")
def test_cuda_requested_without_cuda_is_refused(digits_ckpt):
    _refused(digits_ckpt, "--task", 4, "--device", "cuda", needles=("--device cuda: no CUDA device is available",))


def _write_npz_task(folder: Path, task: int, features: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed + task)
    y = np.arange(40) % 2 + 10 * task
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / f"task{task}.npz",
        x_train=rng.normal(size=(40, features)).astype(np.float32),
        y_train=y,
        x_test=rng.normal(size=(10, features)).astype(np.float32),
        y_test=y[:10],
    )


@pytest.mark.parametrize(
    "option, value, applies",
    [
        ("--image-size", "32", "split-mnist, split-fashion, image-folder"),
        ("--channels", "3", "image-folder, split-tinyimagenet"),
    ],
)
def test_image_options_for_a_benchmark_that_would_ignore_them_are_refused(tmp_path, option, value, applies):
    ckpt = tmp_path / "m.pt"
    assert_error(
        wsn("train-task", "--task", 1, "--ckpt", ckpt, option, value),
        2,
        f"{option} applies to benchmark {applies}",
        "not split-digits",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_conv_net_on_flat_features_is_a_data_error(tmp_path):
    assert_error(
        wsn("train-task", "--task", 1, "--ckpt", tmp_path / "m.pt", "--arch", "conv"),
        1,
        "arch conv needs image inputs (C, H, W), got shape (64,)",
    )
    assert list(tmp_path.iterdir()) == []


def test_npz_task_whose_features_do_not_fit_names_both_shapes_and_the_first_task(tmp_path):
    data, ckpt = tmp_path / "data", tmp_path / "npz.pt"
    _write_npz_task(data, 2, features=10)
    _write_npz_task(data, 1, features=12)  # the lowest-numbered file does not decide the shape
    assert_ok(
        wsn(
            "train-task",
            "--task",
            2,
            "--ckpt",
            ckpt,
            "--benchmark",
            "npz",
            "--data-root",
            data,
            "--epochs",
            1,
            "--hidden",
            "8",
        )
    )
    assert load_checkpoint(ckpt).meta.model.input_shape == [10]
    _refused(
        ckpt,
        "--task",
        1,
        "--data-root",
        data,
        needles=(
            "task 1 inputs have 12 features, the checkpoint's network takes 10 (fixed by task 2, the first learned)",
            "learn the widest task first",
        ),
    )


def test_a_signed_checkpoint_is_never_extended_into_an_unsigned_one(tmp_path, monkeypatch):
    ckpt = tmp_path / "m.pt"
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "s3cret")
    assert_ok(wsn("train-task", "--task", 1, "--ckpt", ckpt, "--epochs", 1))
    before = ckpt.read_bytes()
    monkeypatch.delenv("WSN_CHECKPOINT_KEY")
    assert_error(
        wsn("train-task", "--task", 2, "--ckpt", ckpt, "--epochs", 1),
        1,
        "the checkpoint is signed; set WSN_CHECKPOINT_KEY",
    )
    assert ckpt.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "s3cret")
    assert_ok(wsn("train-task", "--task", 2, "--ckpt", ckpt, "--epochs", 1))
    assert load_checkpoint(ckpt).signature == "verified"


def test_training_on_a_tampered_checkpoint_is_refused(digits_ckpt):
    edit_arrays(digits_ckpt, lambda a: a["layer/layers.1/weight"].__setitem__((0, 0), 5.0), recompute=False)
    _refused(
        digits_ckpt, "--task", 4, needles=("'layer/layers.1/weight' fails its checksum", "refusing to train on it")
    )


def test_a_checkpoint_in_use_is_refused(digits_ckpt):
    with CheckpointLock(digits_ckpt):
        before = digits_ckpt.read_bytes()
        result = wsn("train-task", "--ckpt", digits_ckpt, "--task", 4)
        assert_error(result, 1, f"{digits_ckpt} is in use by pid {os.getpid()}")
        assert digits_ckpt.read_bytes() == before


# ---- eval --------------------------------------------------------------------------------------


def test_eval_json_proves_zero_forgetting(digits_ckpt):
    report = json_out(wsn("eval", "--ckpt", digits_ckpt, "--json"))
    assert report["schema"] == "wsn.eval/1" and report["checkpoint"] == str(digits_ckpt)
    assert [t["task"] for t in report["tasks"]] == list(DIGITS_ORDER)
    for t in report["tasks"]:
        assert t["status"] == "proven" and t["accuracy"] == t["accuracy_at_learning"] and t["differing_outputs"] == 0
    assert report["bwt"] == 0.0 and report["forget_free"] is True and report["bwt_task_ids"] == list(DIGITS_ORDER[:-1])
    assert report["acc"] == pytest.approx(np.mean([t["accuracy"] for t in report["tasks"]]), abs=1e-12)
    used = load_checkpoint(digits_ckpt).used_weights()
    assert report["capacity_used"] == pytest.approx(sum(int(m.sum()) for m in used.values()) / sum(LAYERS.values()))
    matrix = report["matrix"]
    assert matrix["task_ids"] == list(DIGITS_ORDER) and matrix["now"] == [t["accuracy"] for t in report["tasks"]]
    for i, row in enumerate(matrix["rows"]):  # WSN: every column stays constant down the rows
        assert row[: i + 1] == matrix["now"][: i + 1] and row[i + 1 :] == [None] * (len(row) - i - 1)


def test_eval_table_matrix_and_task_selection(digits_ckpt):
    result = wsn("eval", "--ckpt", digits_ckpt)
    assert_ok(result)
    assert "forget-free: proven (3 tasks re-measured)" in result.stdout and "accuracy matrix" in result.stdout
    picked = json_out(wsn("eval", "--ckpt", digits_ckpt, "--task", 3, "-t", 1, "--json"))
    assert [t["task"] for t in picked["tasks"]] == [3, 1]
    twice = json_out(wsn("eval", "--ckpt", digits_ckpt, "--task", 1, "--task", 1, "--json"))
    assert [t["task"] for t in twice["tasks"]] == [1]  # a task named twice counts once in ACC and BWT


def test_eval_of_an_unlearned_task_or_missing_checkpoint_is_refused(digits_ckpt, tmp_path):
    assert_error(
        wsn("eval", "--ckpt", digits_ckpt, "--task", 4),
        1,
        "task 4 is not learned in this checkpoint (learned: 2, 1, 3)",
    )
    assert_error(wsn("eval", "--ckpt", tmp_path / "nope.pt"), 1, "no such checkpoint")


def _position(ckpt, layer: str, inside: int | None) -> tuple[tuple[int, int], set[int]]:
    """A weight inside task `inside`'s mask (preferring one no other task uses), or an unused one;
    returns it with the set of tasks whose mask holds it."""
    masks = {t: ckpt.masks[t][layer] for t in ckpt.learned()}
    if inside is None:
        candidates = ~ckpt.used_weights()[layer]
    else:
        others = torch.zeros_like(masks[inside])
        for t, m in masks.items():
            if t != inside:
                others |= m
        candidates = masks[inside] & ~others
        if not candidates.any():
            candidates = masks[inside]
    index = tuple(int(i) for i in candidates.nonzero()[0])
    return index, {t for t, m in masks.items() if m[index]}


def _bump(path: Path, name: str, index, delta: float = 1.0, recompute: bool = True) -> None:
    def change(arrays):
        arrays[name][index] += delta

    edit_arrays(path, change, recompute)


@pytest.mark.parametrize("recompute", [False, True], ids=["checksum-stale", "checksum-recomputed"])
def test_eval_exits_3_when_a_frozen_weight_was_changed(digits_ckpt, recompute):
    index, tasks = _position(load_checkpoint(digits_ckpt), "layers.0", inside=1)
    assert 1 in tasks
    _bump(digits_ckpt, "layer/layers.0/weight", index, recompute=recompute)
    result = wsn("eval", "--ckpt", digits_ckpt, "--json")
    line = assert_error(result, 3, "forgetting detected")
    named = {int(t) for t in line.split("task(s) ")[1].split(" changed")[0].split(", ")}
    assert named == tasks
    report = json.loads(result.stdout)
    assert set(report["changed"]) == tasks and report["forget_free"] is False
    assert all(t["status"] == "changed" and not t["subnet_match"] for t in report["tasks"] if t["task"] in tasks)


def test_eval_exits_3_when_an_old_head_or_transform_was_changed(digits_ckpt, tmp_path):
    copy = tmp_path / "copy.pt"
    shutil.copyfile(digits_ckpt, copy)
    _bump(digits_ckpt, "head/1/bias", 0, 0.5)
    assert_error(
        wsn("eval", "--ckpt", digits_ckpt), 3, "forgetting detected: the subnetwork of task(s) 1 changed since learned"
    )
    _bump(copy, "prep/3/std", 0, 0.5)  # the input transform is part of the task's function
    assert_error(wsn("eval", "--ckpt", copy), 3, "task(s) 3 changed")


def test_eval_reports_an_edited_unused_weight_as_tampering_not_forgetting(digits_ckpt):
    index, tasks = _position(load_checkpoint(digits_ckpt), "layers.1", inside=None)
    assert tasks == set()
    _bump(digits_ckpt, "layer/layers.1/weight", index, recompute=False)
    result = wsn("eval", "--ckpt", digits_ckpt, "--json")
    assert_error(result, 1, "tensor 'layer/layers.1/weight' fails its checksum", "learned tasks are unaffected")
    report = json.loads(result.stdout)
    assert report["forget_free"] is True and all(t["status"] == "proven" for t in report["tasks"])
    assert report["tampered"] == ["tensor 'layer/layers.1/weight' fails its checksum"] and report["bwt"] == 0.0


def test_an_edited_recorded_accuracy_is_flagged_as_tampered(digits_ckpt):
    edit_meta(
        digits_ckpt, lambda m: m["tasks"][0].__setitem__("accuracy", m["tasks"][0]["accuracy"] - 0.032), restamp=True
    )  # the record digest recomputed: the cross-check against the recorded predictions still catches it
    result = wsn("eval", "--ckpt", digits_ckpt, "--json")
    assert_error(result, 1, "task 2: the recorded accuracy", "contradicts its recorded predictions")
    assert json.loads(result.stdout)["tampered"]


def test_a_deleted_task_record_is_never_silently_dropped(digits_ckpt, tmp_path):
    """A task record removed, checksums recomputed: its masks remain, and the file is refused."""
    middle = tmp_path / "middle.pt"
    shutil.copyfile(digits_ckpt, middle)
    last = DIGITS_ORDER[-1]
    edit_meta(digits_ckpt, lambda m: m.__setitem__("tasks", [r for r in m["tasks"] if r["task"] != last]))
    line = assert_error(
        wsn("eval", "--ckpt", digits_ckpt),
        1,
        "masks tensor is not a valid packed-mask file for these 2 task records",
        "more than the records and meta.layers declare",
    )
    assert "WSN_MAX_MASK_BITS" not in line  # no limit to raise: the file contradicts itself
    # a record from the middle of the learning order breaks the order itself: refused on load
    edit_meta(middle, lambda m: m.__setitem__("tasks", [r for r in m["tasks"] if r["task"] != DIGITS_ORDER[1]]))
    assert_error(wsn("eval", "--ckpt", middle), 1, "order is 3, expected 2")


def test_tensors_left_by_a_deleted_record_are_reported_as_tampered(finetune_ckpt):
    """Fine-tuning has no masks tensor: the removed last task's head and predictions remain, named."""
    edit_meta(finetune_ckpt, lambda m: m.__setitem__("tasks", [r for r in m["tasks"] if r["task"] != 2]))
    result = wsn("eval", "--ckpt", finetune_ckpt, "--json")
    assert_error(result, 3, "forgetting detected")  # fine-tuning forgot task 1: that outranks the tampering
    report = json.loads(result.stdout)
    assert [t["task"] for t in report["tasks"]] == [1]
    assert "tensor 'head/2/weight' belongs to no task record (a record was removed?)" in report["tampered"]


def test_a_relative_data_root_is_recorded_absolute_and_evaluates_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv("WSN_DATA_ROOT", raising=False)
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    _write_npz_task(work / "data", 1, features=6)
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert_ok(
        wsn(
            "train-task",
            "--task",
            1,
            "--ckpt",
            "npz.pt",
            "--benchmark",
            "npz",
            "--data-root",
            "data",
            "--epochs",
            1,
            "--hidden",
            "8",
        )
    )
    assert load_checkpoint(work / "npz.pt").meta.data_root == str((work / "data").resolve())
    monkeypatch.chdir(elsewhere)
    assert json_out(wsn("eval", "--ckpt", work / "npz.pt", "--json"))["forget_free"] is True
    # precedence: --data-root, then WSN_DATA_ROOT, then the recorded folder
    monkeypatch.setenv("WSN_DATA_ROOT", str(elsewhere))
    assert_error(wsn("eval", "--ckpt", work / "npz.pt"), 1, str(elsewhere))
    assert_ok(wsn("eval", "--ckpt", work / "npz.pt", "--data-root", work / "data"))


def test_changed_test_data_is_not_called_proven_and_is_left_out_of_bwt(digits_ckpt):
    # as if the data files changed since learning (the record digest recomputed: the record is sound)
    edit_meta(digits_ckpt, lambda m: m["tasks"][0].__setitem__("data_digest", "f" * 64), restamp=True)
    result = wsn("eval", "--ckpt", digits_ckpt, "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    first = report["tasks"][0]
    assert first["status"] == "data-changed" and first["change"] is None and first["outputs_match"] is None
    assert report["data_changed"] == [2] and report["bwt_task_ids"] == [1]
    table = wsn("eval", "--ckpt", digits_ckpt)
    assert "test data differs from learning" in table.stdout
    assert "proven for task(s) 1, 3; task(s) 2: subnetwork unchanged, outputs not comparable" in " ".join(
        table.stdout.split()
    )


def test_identical_subnetwork_with_differing_predictions_warns_and_exits_0(digits_ckpt):
    """Near-ties computed differently elsewhere: stored predictions differ in a few items."""
    ckpt = load_checkpoint(digits_ckpt)
    pred = ckpt.predictions[1].copy()
    y = None

    def change_arrays(arrays):
        nonlocal y
        flipped = pred.copy()
        flipped[:2] = 1 - flipped[:2]
        arrays["pred/1"] = flipped.astype(np.uint8)
        y = flipped

    edit_arrays(digits_ckpt, change_arrays)
    from wsncli.engine.usecases.outputs import outputs_digest
    from wsncli.engine.usecases.record import recorded_task_data

    truth = recorded_task_data(ckpt, 1, None).y_test

    def change_meta(m):
        record = next(r for r in m["tasks"] if r["task"] == 1)
        record["outputs_digest"] = outputs_digest(y)
        record["accuracy"] = float((y == truth).mean())

    edit_meta(digits_ckpt, change_meta, restamp=True)  # as another machine would have recorded them
    result = wsn("eval", "--ckpt", digits_ckpt, "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    task1 = next(t for t in report["tasks"] if t["task"] == 1)
    assert task1["status"] == "outputs-differ" and task1["differing_outputs"] == 2 and task1["outputs_match"] is False
    assert report["outputs_match"] is False and report["forget_free"] is True and report["outputs_differ"] == [1]
    warning = [l for l in result.stderr.splitlines() if l.startswith("wsn: warning: ")]
    assert len(warning) == 1 and "task 1: 2 of" in warning[0] and "not forgetting" in warning[0]


def test_finetune_baseline_forgets_and_bwt_leaves_out_the_last_task(finetune_ckpt):
    result = wsn("eval", "--ckpt", finetune_ckpt, "--json")
    assert_error(result, 3, "forgetting detected: the subnetwork of task(s) 1 changed")
    report = json.loads(result.stdout)
    assert report["forget_free"] is False and report["capacity_used"] is None
    assert [t["status"] for t in report["tasks"]] == ["changed", "proven"]  # the last task is as learned
    first = report["tasks"][0]
    assert report["bwt_task_ids"] == [1] and report["bwt"] == pytest.approx(
        first["accuracy"] - first["accuracy_at_learning"]
    )
    assert report["matrix"]["rows"][1][0] is not None  # the row after task 2 re-measured task 1


# ---- inspect ---------------------------------------------------------------------------------------


def test_inspect_json_describes_tasks_layers_and_sizes(digits_ckpt):
    d = json_out(wsn("inspect", digits_ckpt, "--json"))
    assert d["schema"] == "wsn.inspect/1" and d["kind"] == "checkpoint" and d["checkpoint"] == str(digits_ckpt)
    assert d["format"] == "wsn-checkpoint" and d["version"] == 3 and d["benchmark"] == "split-digits"
    assert d["task_ids"] == list(DIGITS_ORDER)
    assert [t["task"] for t in d["tasks"]] == list(DIGITS_ORDER) and [t["order"] for t in d["tasks"]] == [1, 2, 3]
    for t in d["tasks"]:
        c = DIGITS_CAPACITY[t["task"]]
        assert (t["capacity"], t["epochs"], t["batch_size"], t["lr"], t["seed"], t["method"]) == (
            c,
            DIGITS_EPOCHS,
            32,
            1e-3,
            0,
            "wsn",
        )
        kept = sum(round(c * n) for n in LAYERS.values())
        assert t["mask_density"] == pytest.approx(kept / sum(LAYERS.values()))
        assert t["new_weights"] == kept - round(t["reuse_of_earlier"] * kept)
        for name, n in LAYERS.items():
            assert t["layers"][name]["density"] == pytest.approx(round(c * n) / n)
    assert d["tasks"][0]["reuse_of_earlier"] == 0.0 and d["tasks"][1]["reuse_of_earlier"] > 0
    union = load_checkpoint(digits_ckpt).used_weights()
    for row in d["layers"]:
        assert row["used"] + row["free"] == row["weights"] == LAYERS[row["layer"]]
        assert row["used"] == int(union[row["layer"]].sum())
    size = d["size"]
    assert size["weights"] == size["scores"] == 4 * sum(LAYERS.values())
    assert 0 < size["masks"] < len(DIGITS_ORDER) * sum(n // 8 for n in LAYERS.values())  # coded: under 1 bit per weight
    assert size["norms"] == 0 and size["file"] == digits_ckpt.stat().st_size
    assert sum(v for k, v in size.items() if k != "file") == size["file"]
    assert d["tampered"] == [] and d["mask_codec"] in (
        "context",
        "ascii7-huffman",
        "paper-huffman",
        "packbits",
        "ascii7",
    )


def test_inspect_table(digits_ckpt):
    result = wsn("inspect", digits_ckpt)
    assert_ok(result)
    assert "tasks in learning order (3)" in result.stdout and "capacity per layer" in result.stdout


def test_inspect_finetune_checkpoint_uses_every_weight(finetune_ckpt):
    d = json_out(wsn("inspect", finetune_ckpt, "--json"))
    assert d["method"] == "finetune" and d["capacity_used"] is None
    assert all(row["free"] == 0 for row in d["layers"])
    assert all(t["mask_density"] is None and t["capacity"] is None for t in d["tasks"])


@pytest.mark.parametrize("make", ["missing", "folder", "garbage", "npz"])
def test_inspect_of_something_that_is_not_a_checkpoint(tmp_path, make):
    path = tmp_path / "x.pt"
    if make == "folder":
        path.mkdir()
    elif make == "garbage":
        path.write_bytes(b"garbage")
    elif make == "npz":
        with open(path, "wb") as f:
            np.savez_compressed(f, **{"task1/layers.0": np.ones(3, bool)})
    line = assert_error(wsn("inspect", path), 1, str(path))
    if make == "npz":
        assert "an .npz of arrays (as unpack-masks writes)" in line and "compressed" not in line


# ---- the app itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["unpack-masks", "x.wsnm"],
        ["predict", "x.npy", "--ckpt", "m.pt", "--task", "1"],
        ["report", "--ckpt", "m.pt"],
        ["export", "--ckpt", "m.pt", "--task", "1"],
    ],
)
def test_dash_as_an_output_path_is_a_usage_error_where_stdout_is_not_offered(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_error(wsn(*command, "-o", "-"), 2, "'-' (standard output) is offered by pack-masks only; name a path")
    assert list(tmp_path.iterdir()) == []  # no file or folder named '-'


def test_a_bare_wsn_shows_the_whole_help_on_stderr_and_exits_2():
    result = wsn()
    assert result.exit_code == 2 and result.stdout == ""
    assert (
        result.stderr.startswith("Usage: wsn [OPTIONS] COMMAND")
        and "train-task" in result.stderr
        and "report" in result.stderr
    )


def test_version_and_help():
    result = wsn("--version")
    assert_ok(result)
    assert result.stdout.strip() == f"wsn {wsncli.__version__}"
    for args in (("-h",), ("--help",)):
        result = wsn(*args)
        assert_ok(result)
        for command in ("train-task", "eval", "inspect", "pack-masks", "unpack-masks"):
            assert command in result.stdout
    result = wsn("train-task", "-h")
    assert_ok(result)
    assert "--capacity" in result.stdout and "--task" in result.stdout


# ---- the installed command, for real ---------------------------------------------------------------


def _run(*args, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WSN_DATA_ROOT"}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_wsn_quickstart_loop(tmp_path):
    exe = shutil.which("wsn") or str(Path(sys.executable).with_name("wsn"))
    assert Path(exe).exists(), "the wsn console script is not installed"
    for task in (1, 2):
        proc = _run(exe, "train-task", "--task", task, "--ckpt", "m.pt", "--epochs", 1, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"learned task {task}" in proc.stdout
    proc = _run(exe, "eval", "--ckpt", "m.pt", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["forget_free"] is True and report["bwt"] == 0.0 and len(report["tasks"]) == 2
    proc = _run(exe, "train-task", "--task", 2, "--ckpt", "m.pt", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("wsn: error: ") and "already learned" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_python_dash_m_version(tmp_path):
    proc = _run(sys.executable, "-m", "wsncli", "--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wsn {wsncli.__version__}"


STARTUP = """
import sys
sys.argv = ["wsn"] + sys.argv[1:]
try:
    from wsncli.cli import main
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("numpy", "torch", "formats.codecs") if m in sys.modules)
print("heavy:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("train-task", "-h"), ("eval", "-h"), ("report", "-h")])
def test_help_and_version_load_neither_numpy_nor_torch(args):
    proc = subprocess.run([sys.executable, "-c", STARTUP, *args], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "heavy:", proc.stderr


def test_inspect_of_a_version_2_checkpoint_never_imports_torch(digits_ckpt):
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP, "inspect", str(digits_ckpt)], capture_output=True, text=True, timeout=60
    )
    assert "torch" not in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "tasks in learning order (3)" in proc.stdout


def test_the_command_lines_codec_names_are_formats_own():
    import formats
    from wsncli.engine.limits import PACK_CODECS

    assert set(PACK_CODECS) == set(formats.PACK_CODECS) and PACK_CODECS[0] == "auto"
