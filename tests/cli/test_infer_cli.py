"""`wsn predict --task auto` and `wsn eval --infer-task` on the split-digits checkpoint, and the
pmnist definition of an inference input."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch

from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from tests.test_benchmarks_smoke import tiny_mnist  # noqa: F401 (a fixture)
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.usecases.infer import InferRequest, candidate_prep, infer_tasks, inference_inputs
from wsncli.engine.usecases.predict import predict_task, task_transform
from wsncli.engine.usecases.record import recorded_task_data

CPU = torch.device("cpu")


@pytest.fixture
def mixed_inputs(digits_ckpt, tmp_path):
    """The first 6 test inputs of every learned task, task after task, and their true tasks."""
    ckpt = load_checkpoint(digits_ckpt)
    parts = {t: inference_inputs(recorded_task_data(ckpt, t, None))[:6] for t in ckpt.learned()}
    path = tmp_path / "x.npy"
    np.save(path, np.concatenate(list(parts.values())))
    return path, np.repeat(list(parts), 6)


@pytest.mark.parametrize("method", ["entropy", "oneshot"])
def test_predict_auto_predicts_each_input_with_its_inferred_task(digits_ckpt, mixed_inputs, method):
    path, _true = mixed_inputs
    doc = json_out(wsn("predict", path, "--ckpt", digits_ckpt, "--task", "auto", "--infer", method, "--json"))
    assert doc["task"] == "auto" and doc["infer"] == method and doc["infer_per_batch"] is None
    inferred = np.asarray(doc["inferred_tasks"])
    assert len(inferred) == doc["n"] == 18 and set(inferred) <= {1, 2, 3}
    x = np.load(path)
    for task in set(inferred.tolist()):  # the same labels as predict --task T gives those inputs
        rows = inferred == task
        own = predict_task(load_checkpoint(digits_ckpt), task, x[rows], CPU, False, "x")
        assert np.asarray(doc["predictions"])[rows].tolist() == own.labels.tolist()
        assert set(own.labels.tolist()) <= set(doc["task_classes"][str(task)])


def test_predict_auto_per_batch_infers_one_task_per_group(digits_ckpt, mixed_inputs):
    path, _true = mixed_inputs
    doc = json_out(wsn("predict", path, "--ckpt", digits_ckpt, "-t", "auto", "--infer-per-batch", "6", "--json"))
    groups = np.asarray(doc["inferred_tasks"]).reshape(3, 6)
    assert (groups == groups[:, :1]).all() and doc["infer_per_batch"] == 6


def test_entropy_inference_picks_the_lowest_normalised_entropy(digits_ckpt, mixed_inputs):
    path, _true = mixed_inputs
    ckpt, x = load_checkpoint(digits_ckpt), np.load(path)
    result = infer_tasks(ckpt, x, InferRequest("entropy"), CPU)
    brute = []
    for task in result.candidates:  # each task's own predict, probabilities as predict --proba gives them
        p = predict_task(ckpt, task, x, CPU, True, "x").probabilities.astype(np.float64)
        brute.append(-(p * np.log(np.maximum(p, 1e-30))).sum(1) / np.log(p.shape[1]))
    expected = np.asarray(result.candidates)[np.argmin(np.stack(brute, 1), 1)]
    np.testing.assert_allclose(result.scores, np.stack(brute, 1), atol=1e-5)
    assert (result.tasks == expected).all()


def test_eval_infer_task_reports_each_protocol_separately(digits_ckpt):
    from wsncli.commands.schemas import EvalDoc

    result = wsn("eval", "--ckpt", digits_ckpt, "--infer-task", "--infer-per-batch", "8", "--json", "-q")
    doc = json_out(result)
    msgspec.json.decode(result.stdout.encode(), type=EvalDoc)  # the documented schema
    inference, accuracy = doc["inference"], {t["task"]: t["accuracy"] for t in doc["tasks"]}
    assert inference["task_ids"] == [2, 1, 3] and inference["infer_per_batch"] == 8
    for row in inference["tasks"]:
        sample = row["per_sample"]
        assert row["accuracy_true_task"] == accuracy[row["task"]]  # what eval measures with the id
        assert sum(sample["confusion"]) == row["n_test"]
        own = sample["confusion"][inference["task_ids"].index(row["task"])]
        assert sample["task_accuracy"] == own / row["n_test"]
        assert sample["accuracy_inferred_task"] <= min(sample["task_accuracy"], row["accuracy_true_task"])
        assert row["per_batch"] is not None and sum(row["per_batch"]["confusion"]) == row["n_test"]
    pooled = inference["per_sample"]
    n = sum(r["n_test"] for r in inference["tasks"])
    diagonal = sum(r["per_sample"]["confusion"][inference["task_ids"].index(r["task"])] for r in inference["tasks"])
    assert pooled["task_accuracy"] == pytest.approx(diagonal / n)
    plain = json_out(wsn("eval", "--ckpt", digits_ckpt, "--json", "-q"))
    assert plain["inference"] is None  # wsn.eval/1 as before


def test_inference_options_are_refused_with_one_line(digits_ckpt, finetune_ckpt, mixed_inputs):
    path, _ = mixed_inputs
    assert_error(wsn("predict", path, "-c", digits_ckpt, "-t", "2", "--infer", "oneshot"), 2, "--task auto only")
    assert_error(wsn("predict", path, "-c", digits_ckpt, "-t", "two"), 2, "task id or auto")
    assert_error(wsn("predict", path, "-c", digits_ckpt, "-t", "0"), 2, "1..")
    assert_error(wsn("eval", "-c", digits_ckpt, "--infer", "oneshot"), 2, "--infer-task only")
    assert_error(wsn("predict", path, "-c", finetune_ckpt, "-t", "auto", "--infer", "oneshot"), 2, "fine-tune")
    assert json_out(wsn("predict", path, "-c", finetune_ckpt, "-t", "auto", "--json"))["n"] == 18  # entropy: any method


def test_a_pmnist_input_is_the_permuted_image(tiny_mnist, tmp_path):  # noqa: F811
    """Each candidate applies its transform without its permutation, so the true task sees exactly
    the network inputs it was learned and measured on."""
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    path = tmp_path / "p.pt"
    for task in (1, 2):
        learn_task(
            TaskRequest(
                ckpt=path, task=task, benchmark="pmnist", data_root=tiny_mnist, hidden=(16,), epochs=1, device="cpu"
            )
        )
    ckpt = load_checkpoint(path)
    for task in (1, 2):
        data = recorded_task_data(ckpt, task, tiny_mnist)
        x = inference_inputs(data)
        assert not np.array_equal(x, data.raw_test)  # permuted
        assert np.array_equal(candidate_prep(task_transform(ckpt, task)).apply(x), data.x_test)  # bit-identical
        result = infer_tasks(ckpt, x[:20], InferRequest("entropy"), CPU)
        p = predict_task(ckpt, task, data.raw_test[:20], CPU, True, "x").probabilities.astype(np.float64)
        own = -(p * np.log(np.maximum(p, 1e-30))).sum(1) / np.log(10)
        np.testing.assert_allclose(result.scores[:, result.candidates.index(task)], own, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "lenet", "conv4"])  # conv: engine tests (24 s here)
def test_inference_end_to_end_on_image_networks(arch, tmp_path):
    """npz image tasks (per-task biases; BatchNorm in resnet18): both rules, both protocols."""
    rng = np.random.default_rng(0)
    root, ckpt = tmp_path / "data", tmp_path / "m.pt"
    root.mkdir()
    for t in (1, 2):
        pattern = rng.normal(size=(1, 20, 20)).astype(np.float32)

        def split(n, pattern=pattern, t=t):
            y = np.arange(n) % 2
            x = rng.normal(size=(n, 1, 20, 20)).astype(np.float32) + (2 * y - 1)[:, None, None, None] * pattern
            return x.astype(np.float32), (y + 2 * t).astype(np.int64)  # task t's labels: 2t, 2t + 1

        (xtr, ytr), (xte, yte) = split(24), split(10)
        np.savez(root / f"task{t}.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
        extra = ("--width", 2) if arch == "resnet18" else ()
        args = ("-c", ckpt, "-t", t, "--benchmark", "npz", "--arch", arch, "--data-root", root, "--epochs", 1, "-q")
        assert json_out(wsn("train-task", *args, *extra, "--json"))["task"]["task"] == t
    for method in ("entropy", "oneshot"):
        doc = json_out(
            wsn("eval", "-c", ckpt, "--infer-task", "--infer", method, "--infer-per-batch", 5, "--json", "-q")
        )
        assert [sum(r["per_sample"]["confusion"]) for r in doc["inference"]["tasks"]] == [10, 10]
        np.save(tmp_path / "x.npy", np.load(root / "task2.npz")["x_test"])
        auto = json_out(wsn("predict", tmp_path / "x.npy", "-c", ckpt, "-t", "auto", "--infer", method, "--json"))
        for label, task in zip(auto["predictions"], auto["inferred_tasks"]):
            assert label in auto["task_classes"][str(task)]


def test_oneshot_per_batch_picks_the_group_whose_summed_per_sample_score_is_lowest(digits_ckpt, mixed_inputs):
    path, _true = mixed_inputs
    ckpt, x = load_checkpoint(digits_ckpt), np.load(path)
    sample = infer_tasks(ckpt, x, InferRequest("oneshot"), CPU)
    grouped = infer_tasks(ckpt, x, InferRequest("oneshot", per_batch=4), CPU)  # groups of 4 over 18 inputs
    for start in range(0, len(x), 4):
        summed = sample.scores[start : start + 4].sum(0)
        np.testing.assert_allclose(grouped.scores[start : start + 4].sum(0), summed, rtol=1e-4, atol=1e-6)
        assert (grouped.tasks[start : start + 4] == sample.candidates[int(np.argmin(summed))]).all()


def test_auto_probabilities_are_padded_with_nan_past_a_smaller_head(tmp_path):
    rng = np.random.default_rng(0)
    root, ckpt = tmp_path / "data", tmp_path / "m.pt"
    root.mkdir()
    for t, n_classes in ((1, 2), (2, 3)):
        y = np.arange(30) % n_classes
        x = rng.normal(size=(30, 6)).astype(np.float32) + y[:, None]
        np.savez(root / f"task{t}.npz", x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
        args = ("-c", ckpt, "-t", t, "--benchmark", "npz", "--data-root", root, "--hidden", "8", "--epochs", 1, "-q")
        assert_ok(wsn("train-task", *args))
    inputs, out = tmp_path / "x.npy", tmp_path / "p.npy"
    np.save(inputs, np.concatenate([np.load(root / f"task{t}.npz")["x_test"] for t in (1, 2)]))
    assert_ok(wsn("predict", inputs, "-c", ckpt, "-t", "auto", "--proba", "-o", out))
    doc = json_out(wsn("predict", inputs, "-c", ckpt, "-t", "auto", "--proba", "--json"))
    rows = np.load(out)
    assert rows.shape == (18, 3) and set(doc["inferred_tasks"]) == {1, 2}  # both widths occur
    for row, probs, task in zip(rows, doc["probabilities"], doc["inferred_tasks"]):
        assert len(probs) == (2 if task == 1 else 3) and np.allclose(row[: len(probs)], probs)
        assert np.isnan(row[len(probs) :]).all()


def test_auto_output_lines_and_eval_tables(digits_ckpt, mixed_inputs):
    path, _ = mixed_inputs
    doc = json_out(wsn("predict", path, "-c", digits_ckpt, "-t", "auto", "--json"))
    lines = wsn("predict", path, "-c", digits_ckpt, "-t", "auto").stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["task", str(t)] for t in doc["inferred_tasks"]]
    table = wsn("eval", "-c", digits_ckpt, "--infer-task", "-q")
    assert_ok(table)
    assert "task inference (entropy), per sample" in table.stdout and "task confusion" in table.stdout


def test_inference_on_an_image_folder_with_string_labels(tmp_path, monkeypatch):
    """image-folder tasks (PNG files, string labels): predict --task auto on a
    folder of images names each file's task and a label of that task."""
    from tests.cli.test_data_cli import _image_folder

    monkeypatch.setenv("WSN_CACHE_DIR", str(tmp_path / "cache"))
    data, ckpt = _image_folder(tmp_path / "imgs"), tmp_path / "img.pt"
    for t in (1, 2):
        args = ("-t", t, "-c", ckpt, "--benchmark", "image-folder", "--data-root", data, "--arch", "conv4")
        assert_ok(wsn("train-task", *args, "--epochs", 1, "--batch-size", 8, "-q"))
    doc = json_out(wsn("eval", "-c", ckpt, "--data-root", data, "--infer-task", "--infer", "oneshot", "--json", "-q"))
    assert [sum(r["per_sample"]["confusion"]) for r in doc["inference"]["tasks"]] == [8, 8]
    auto = json_out(wsn("predict", data / "task2" / "test" / "dog2", "-c", ckpt, "-t", "auto", "--json"))
    assert len(auto["files"]) == 4 and auto["task_classes"] == {"1": ["cat1", "dog1"], "2": ["cat2", "dog2"]}
    assert all(label in auto["task_classes"][str(t)] for label, t in zip(auto["predictions"], auto["inferred_tasks"]))
