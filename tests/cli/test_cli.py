"""The `wsn` command line: train-task refusals, eval's forget-free proof, inspect, version, layering."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wsncli
from tests.cli.helpers import assert_error, assert_ok, explain, json_out, wsn
from tests.conftest import DIGITS_CAPACITY, DIGITS_EPOCHS, DIGITS_ORDER
from wsncli.engine.store.checkpoint import load_checkpoint, tensor_digest
from wsncli.engine.store.lock import CheckpointLock

LAYERS = {"layers.0": 100 * 64, "layers.1": 100 * 100}  # split-digits MLP 64-100-100


# ---- train-task ----------------------------------------------------------------------------------


def test_train_task_creates_then_extends_a_checkpoint(tmp_path):
    ckpt = tmp_path / "m.pt"
    first = json_out(wsn("train-task", "--task", 1, "--ckpt", ckpt, "--epochs", 1, "--capacity", 0.2, "--json"))
    assert first["created"] is True and first["learned"] == [1] and first["task"] == 1 and first["order"] == 1
    assert first["checkpoint_bytes"] == ckpt.stat().st_size
    assert first["kept_per_layer"] == {n: round(0.2 * w) for n, w in LAYERS.items()}
    assert 0.0 <= first["accuracy"] <= 1.0 and first["capacity"] == 0.2
    second = wsn("train-task", "--task", 2, "--ckpt", ckpt, "--epochs", 1)
    assert_ok(second)
    assert "learned task 2 (2 of 2" in second.stdout
    assert second.stderr.count("epoch 1:") == 1  # per-epoch lines go to stderr
    assert load_checkpoint(ckpt).task_record(2).capacity == 0.2  # the checkpoint's default


def _refused(ckpt: Path, *args, needles=(), code=1):
    """Run train-task; it must fail with one line on stderr and leave the checkpoint as it was."""
    before = ckpt.read_bytes() if ckpt.exists() else None
    result = wsn("train-task", "--ckpt", ckpt, *args)
    assert_error(result, code, *needles)
    after = ckpt.read_bytes() if ckpt.exists() else None
    assert after == before, "a refused train-task changed the checkpoint"
    return result


REFUSALS = [
    (("--task", 1), ("task 1 is already learned (learned 2. of 3)",)),
    (("--task", 4, "--benchmark", "pmnist"), ("checkpoint was made with benchmark 'split-digits', not 'pmnist'",)),
    (("--task", 4, "--arch", "conv"), ("checkpoint was made with architecture 'mlp', not 'conv'",)),
    (("--task", 4, "--hidden", "50-50"), ("hidden sizes '100-100', not '50-50'",)),
    (("--task", 4, "--method", "finetune"), ("method 'wsn', not 'finetune'",)),
    (("--task", 4, "--capacity", "0"), ("--capacity must be in (0, 1], got 0.0",)),
    (("--task", 4, "--capacity=-0.1"), ("--capacity must be in (0, 1], got -0.1",)),
    (("--task", 4, "--capacity", "1.5"), ("--capacity must be in (0, 1], got 1.5",)),
    (("--task", 4, "--capacity", "nan"), ("--capacity must be in (0, 1], got nan",)),
    (("--task", 4, "--capacity", "1e-9"), ("--capacity 1e-09 keeps no weight of layer 'layers.0' (6400 weights)",)),
    (("--task", 4, "--benchmark", "cifar1000"), ("unknown benchmark 'cifar1000'",)),
    (("--task", 4, "--arch", "resnet"), ("unknown architecture 'resnet'",)),
    (("--task", 4, "--method", "ewc"), ("unknown method 'ewc'",)),
    (("--task", 6), ("split-digits has no task 6: its tasks are 1..5",)),
    (("--task", 0), ("--task must be a positive task id",)),
    (("--task", -3), ("--task must be a positive task id", "got -3")),
    (("--task", 4, "--epochs", 0), ("--epochs must be at least 1, got 0",)),
    (("--task", 4, "--batch-size", 0), ("--batch-size must be at least 1, got 0",)),
    (("--task", 4, "--lr", "0"), ("--lr must be a positive number",)),
    (("--task", 4, "--lr", "inf"), ("--lr must be a positive number",)),
]


@pytest.mark.parametrize(("args", "needles"), [pytest.param(a, n, id=" ".join(map(str, a))) for a, n in REFUSALS])
def test_train_task_refusals_leave_the_checkpoint_unchanged(digits_ckpt, args, needles):
    _refused(digits_ckpt, *args, needles=needles)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--task", 6), ("split-digits has no task 6",)),
        (("--task", 1, "--benchmark", "nope"), ("unknown benchmark 'nope'",)),
        (("--task", 1, "--capacity", "1.5"), ("--capacity",)),
        (("--task", 1, "--benchmark", "npz"), ("npz needs a folder of task<T>.npz files",)),
    ],
    ids=["task-6", "unknown-benchmark", "capacity-1.5", "npz-without-data-root"],
)
def test_refusals_for_a_new_checkpoint_create_no_file(tmp_path, args, needles):
    ckpt = tmp_path / "new.pt"
    _refused(ckpt, *args, needles=needles)
    assert not ckpt.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new.pt")]  # no temporary left


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available here")
def test_cuda_requested_without_cuda_is_refused(digits_ckpt):
    _refused(digits_ckpt, "--task", 4, "--device", "cuda", needles=("--device cuda: no CUDA device is available",))


def _write_npz_task(folder: Path, task: int, features: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed + task)
    y = np.arange(40) % 2 + 10 * task
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"task{task}.npz", x_train=rng.normal(size=(40, features)).astype(np.float32), y_train=y,
             x_test=rng.normal(size=(10, features)).astype(np.float32), y_test=y[:10])


def test_npz_task_whose_features_do_not_fit_is_refused(tmp_path):
    data, ckpt = tmp_path / "data", tmp_path / "npz.pt"
    _write_npz_task(data, 1, features=10)
    _write_npz_task(data, 2, features=12)
    assert_ok(wsn("train-task", "--task", 1, "--ckpt", ckpt, "--benchmark", "npz", "--data-root", data, "--epochs", 1, "--hidden", "8"))
    _refused(ckpt, "--task", 2, "--data-root", data, needles=("npz task 2", "samples have shape (12,) but the benchmark's input shape is (10,)"))
    # the same data root later holding other-sized inputs for every task: the network's shape decides
    other = tmp_path / "other"
    for t in (1, 2):
        _write_npz_task(other, t, features=12)
    _refused(ckpt, "--task", 2, "--data-root", other, needles=("task 2 inputs have shape (12,), the network takes (10,)",))


def test_training_on_a_tampered_checkpoint_is_refused(digits_ckpt):
    payload = torch.load(digits_ckpt, weights_only=True)
    payload["tensors"]["layer/layers.1/weight"][0, 0] += 1.0
    torch.save(payload, digits_ckpt)
    _refused(digits_ckpt, "--task", 4, needles=("'layer/layers.1/weight' fails its checksum", "refusing to train on it"))


def test_a_checkpoint_in_use_is_refused(digits_ckpt):
    with CheckpointLock(digits_ckpt):
        _refused(digits_ckpt, "--task", 4, needles=(f"{digits_ckpt} is in use by pid {os.getpid()}",))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("train-task", "--ckpt", "m.pt"), "Missing option '--task'"),
        (("train-task", "--task", "1"), "Missing option '--ckpt'"),
        (("train-task", "--task", "abc", "--ckpt", "m.pt"), "Invalid value for '--task'"),
        (("train-task", "--task", "1", "--ckpt", "m.pt", "--capacity", "half"), "Invalid value for '--capacity'"),
        (("train-task", "--task", "1", "--ckpt", "m.pt", "--bogus"), "No such option: --bogus"),
        (("eval",), "Missing option '--ckpt'"),
        (("frobnicate",), "No such command 'frobnicate'"),
    ],
    ids=["no-task", "no-ckpt", "task-not-int", "capacity-not-float", "unknown-option", "eval-no-ckpt", "unknown-command"],
)
def test_usage_errors_exit_2(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    result = wsn(*args)
    assert result.exit_code == 2, explain(result)
    assert needle in " ".join(result.stderr.split()), explain(result)  # typer's box may wrap lines
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [(("--hidden", "a-b"), "--hidden must be sizes like 100-100"), (("--device", "tpu"), "--device must be auto, cpu or cuda")],
    ids=["hidden", "device"],
)
def test_meaningless_option_values_exit_2_with_one_line(tmp_path, args, needle):
    _refused(tmp_path / "m.pt", "--task", 1, *args, needles=(needle,), code=2)


# ---- eval --------------------------------------------------------------------------------------


def test_eval_json_proves_zero_forgetting(digits_ckpt):
    report = json_out(wsn("eval", "--ckpt", digits_ckpt, "--json"))
    assert {"tasks", "acc", "bwt", "forget_free", "capacity_used"} <= report.keys()
    assert [t["task"] for t in report["tasks"]] == list(DIGITS_ORDER)
    for t in report["tasks"]:
        assert {"task", "accuracy", "accuracy_at_learning", "unchanged"} <= t.keys()
        assert t["unchanged"] is True and t["accuracy"] == t["accuracy_at_learning"]
    assert report["bwt"] == 0.0 and report["forget_free"] is True
    assert report["acc"] == pytest.approx(np.mean([t["accuracy"] for t in report["tasks"]]), abs=1e-12)
    ckpt = load_checkpoint(digits_ckpt)
    used = ckpt.used_weights()
    assert report["capacity_used"] == pytest.approx(sum(int(m.sum()) for m in used.values()) / sum(LAYERS.values()))


def test_eval_table_and_task_selection(digits_ckpt):
    result = wsn("eval", "--ckpt", digits_ckpt)
    assert_ok(result)
    assert "forget-free: proven (3 tasks re-measured)" in result.stdout
    picked = json_out(wsn("eval", "--ckpt", digits_ckpt, "--task", 3, "-t", 1, "--json"))
    assert [t["task"] for t in picked["tasks"]] == [3, 1]
    twice = json_out(wsn("eval", "--ckpt", digits_ckpt, "--task", 1, "--task", 1, "--json"))
    assert [t["task"] for t in twice["tasks"]] == [1]  # a task named twice counts once in ACC and BWT


def test_eval_of_an_unlearned_task_is_refused(digits_ckpt):
    assert_error(wsn("eval", "--ckpt", digits_ckpt, "--task", 4), 1, "task 4 is not learned in this checkpoint (learned: 2, 1, 3)")


def test_eval_of_a_missing_checkpoint(tmp_path):
    assert_error(wsn("eval", "--ckpt", tmp_path / "nope.pt"), 1, "no such checkpoint")


def _edit_weight(path: Path, layer: str, index: tuple[int, int], fix_checksum: bool = False) -> None:
    """Change one weight by hand, as an outside edit would: load the payload, add 1, save it back."""
    payload = torch.load(path, weights_only=True)
    name = f"layer/{layer}/weight"
    payload["tensors"][name][index] += 1.0
    if fix_checksum:
        payload["checksums"]["tensors"][name] = tensor_digest(payload["tensors"][name])
    torch.save(payload, path)


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


@pytest.mark.parametrize("fix_checksum", [False, True], ids=["checksum-stale", "checksum-recomputed"])
def test_eval_exits_3_when_a_frozen_weight_was_changed(digits_ckpt, fix_checksum):
    index, tasks = _position(load_checkpoint(digits_ckpt), "layers.0", inside=1)
    assert 1 in tasks
    _edit_weight(digits_ckpt, "layers.0", index, fix_checksum)
    result = wsn("eval", "--ckpt", digits_ckpt, "--json")
    line = assert_error(result, 3, "forgetting detected")
    named = {int(t) for t in line.split("task(s) ")[1].split(" changed")[0].split(", ")}
    assert named == tasks
    report = json.loads(result.stdout)
    assert {t["task"] for t in report["tasks"] if not t["unchanged"]} == tasks
    assert report["forget_free"] is False
    assert all(not t["subnet_match"] for t in report["tasks"] if t["task"] in tasks)


def test_eval_exits_3_when_an_old_head_was_changed(digits_ckpt):
    payload = torch.load(digits_ckpt, weights_only=True)
    payload["tensors"]["head/1/bias"][0] += 0.5
    payload["checksums"]["tensors"]["head/1/bias"] = tensor_digest(payload["tensors"]["head/1/bias"])
    torch.save(payload, digits_ckpt)
    assert_error(wsn("eval", "--ckpt", digits_ckpt), 3, "forgetting detected: task(s) 1 changed since learned")


def test_eval_reports_an_edited_unused_weight_as_tampering_not_forgetting(digits_ckpt):
    index, tasks = _position(load_checkpoint(digits_ckpt), "layers.1", inside=None)
    assert tasks == set()
    _edit_weight(digits_ckpt, "layers.1", index)
    result = wsn("eval", "--ckpt", digits_ckpt, "--json")
    assert_error(result, 1, "tensor 'layer/layers.1/weight' fails its checksum", "learned tasks are unaffected")
    report = json.loads(result.stdout)
    assert report["forget_free"] is True and all(t["unchanged"] for t in report["tasks"])
    assert report["tampered"] == ["layer/layers.1/weight"] and report["bwt"] == 0.0


def test_finetune_baseline_forgets_and_eval_says_so(finetune_ckpt):
    result = wsn("eval", "--ckpt", finetune_ckpt, "--json")
    assert_error(result, 3, "forgetting detected: task(s) 1 changed")
    report = json.loads(result.stdout)
    assert report["forget_free"] is False and report["capacity_used"] == 1.0
    assert [t["unchanged"] for t in report["tasks"]] == [False, True]  # the last task is as learned
    assert math.isfinite(report["bwt"])  # measured, not asserted
    first = report["tasks"][0]
    assert report["bwt"] == pytest.approx((first["accuracy"] - first["accuracy_at_learning"]) / 2)


# ---- inspect ---------------------------------------------------------------------------------------


def test_inspect_json_describes_tasks_layers_and_sizes(digits_ckpt):
    d = json_out(wsn("inspect", digits_ckpt, "--json"))
    assert d["format"] == "wsn-checkpoint" and d["version"] == 1 and d["benchmark"] == "split-digits"
    assert d["learned"] == list(DIGITS_ORDER)
    assert [t["task"] for t in d["tasks"]] == list(DIGITS_ORDER) and [t["order"] for t in d["tasks"]] == [1, 2, 3]
    for t in d["tasks"]:
        c = DIGITS_CAPACITY[t["task"]]
        assert (t["capacity"], t["epochs"], t["batch_size"], t["lr"], t["seed"], t["method"]) == (c, DIGITS_EPOCHS, 32, 1e-3, 0, "wsn")
        kept = sum(round(c * n) for n in LAYERS.values())
        assert t["mask_density"] == pytest.approx(kept / sum(LAYERS.values()))
        assert t["new_weights"] == kept - round(t["reuse_of_earlier"] * kept)
        for name, n in LAYERS.items():
            assert t["layers"][name]["density"] == pytest.approx(round(c * n) / n)
    assert d["tasks"][0]["reuse_of_earlier"] == 0.0 and d["tasks"][1]["reuse_of_earlier"] > 0
    ckpt = load_checkpoint(digits_ckpt)
    union = ckpt.used_weights()
    for row in d["layers"]:
        assert row["used"] + row["free"] == row["weights"] == LAYERS[row["layer"]]
        assert row["used"] == int(union[row["layer"]].sum())
    size = d["size"]
    assert {"weights", "scores", "heads", "norms", "masks", "file", "metadata_and_container"} <= size.keys()
    assert size["weights"] == size["scores"] == 4 * sum(LAYERS.values())
    assert size["masks"] == len(DIGITS_ORDER) * sum(math.ceil(n / 8) for n in LAYERS.values())
    assert size["norms"] == 0 and size["file"] == digits_ckpt.stat().st_size
    assert d["tampered"] == []


def test_inspect_table(digits_ckpt):
    result = wsn("inspect", digits_ckpt)
    assert_ok(result)
    assert "tasks in learning order (3)" in result.stdout and "capacity per layer" in result.stdout


def test_inspect_finetune_checkpoint_uses_every_weight(finetune_ckpt):
    d = json_out(wsn("inspect", finetune_ckpt, "--json"))
    assert d["method"] == "finetune" and d["capacity_used"] == 1.0
    assert all(row["free"] == 0 for row in d["layers"])
    assert all("mask_density" not in t for t in d["tasks"])


@pytest.mark.parametrize("make", ["missing", "folder", "garbage"])
def test_inspect_of_something_that_is_not_a_checkpoint(tmp_path, make):
    path = tmp_path / "x.pt"
    if make == "folder":
        path.mkdir()
    elif make == "garbage":
        path.write_bytes(b"garbage")
    assert_error(wsn("inspect", path), 1, str(path))


# ---- the app itself ------------------------------------------------------------------------------


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


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("typer", "rich", "click"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
try:
    import typer
except ImportError:
    pass
else:
    raise SystemExit("the blocker does not work")
import wsncli.engine.lifecycle.learn, wsncli.engine.lifecycle.evaluate, wsncli.engine.store.checkpoint, wsncli.engine.lifecycle.inspect
import wsncli.engine.lifecycle.pack, wsncli.engine.lifecycle.train, wsncli.engine.data.registry
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("typer", "rich", "click"))
print("ok" if not bad else f"imported {bad}")
"""


def test_engine_imports_without_typer_or_rich():
    repo = Path(__file__).resolve().parents[2]  # import this checkout's wsncli
    proc = subprocess.run([sys.executable, "-c", BLOCKER], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# ---- the installed command, for real ---------------------------------------------------------------


def _run(*args, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WSN_DATA_ROOT"}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_wsn_quickstart_loop(tmp_path):
    exe = shutil.which("wsn")
    if exe is None:
        pytest.skip("the wsn console script is not installed")
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


def test_python_dash_m_version(tmp_path):
    proc = _run(sys.executable, "-m", "wsncli", "--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wsn {wsncli.__version__}"
