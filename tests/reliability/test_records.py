"""What decides which data eval measures, and what a task's labels mean, is part of what eval proves
(docs/CHECKPOINT.md section 6): an edit of the record alone (no parameter changed) is a damaged
record, exit 1, never forget-free and never "forgetting detected"; a changed parameter is still
`changed`, exit 3. Format-2 checkpoints (the golden files, written by wsn 0.2.0) keep loading,
evaluating and verifying."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.ckpt_tools import edit_arrays, edit_meta, read_parts, write_parts
from tests.cli.helpers import assert_error, wsn
from tests.reliability.trust_tools import learn

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "checkpoints"


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "m.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSN_CHECKPOINT_KEY", raising=False)
        for task in (1, 2):
            learn(path, task, epochs=2)
    return path


@pytest.fixture
def ckpt(master, tmp_path, monkeypatch):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    path = tmp_path / "m.pt"
    shutil.copyfile(master, path)
    return path


def _task(i, key, value):
    return lambda m: m["tasks"][i].__setitem__(key, value)


def _prep(key, value):
    return lambda m: m["tasks"][0]["preprocess"].__setitem__(key, value)


RECORD_EDITS = {
    "classes": _task(0, "classes", [0, 7]),
    "n-tasks": lambda m: m.__setitem__("n_tasks", 3),
    "transform-scale": _prep("scale", 8.0),
    "transform-divide": _prep("divide", False),
    "subnet-digest": _task(0, "subnet_digest", "0" * 64),
    "data-digest": _task(1, "data_digest", "0" * 64),
    "outputs-digest": _task(1, "outputs_digest", "0" * 64),
    "digest-version": _task(0, "digest_version", 2),
    "image-size": lambda m: m.__setitem__("image_size", 32),
}


@pytest.mark.parametrize("edit", list(RECORD_EDITS))
def test_a_record_only_edit_is_a_damaged_record_not_forgetting(ckpt, edit):
    edit_meta(ckpt, RECORD_EDITS[edit])  # every checksum recomputed: only the record digest sees it
    line = assert_error(wsn("eval", "--ckpt", ckpt), 1, str(ckpt), "fails its record digest")
    assert "forgetting" not in line.replace("not forgetting", "")
    result = wsn("eval", "--ckpt", ckpt, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["forget_free"] is False and doc["changed"] == [] and doc["record_changed"]
    assert {t["status"] for t in doc["tasks"] if not t["record_match"]} == {"record-changed"}


def test_a_benchmark_edit_that_loads_other_data_is_not_forget_free(ckpt, tmp_path):
    """The issue's case: the recorded benchmark changed to one whose data loads (64 features, labels
    0 and 1): before, eval measured the other data, said `data-changed` and exited 0 forget-free."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "other"
    folder.mkdir()
    for task in (1, 2):
        x = rng.normal(size=(60, 64)).astype(np.float32)
        y = np.arange(60) % 2
        np.savez(folder / f"task{task}.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    edit_meta(ckpt, lambda m: m.update(benchmark="npz", data_root=str(folder)))
    result = wsn("eval", "--ckpt", ckpt, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 1 and doc["forget_free"] is False
    assert [t["status"] for t in doc["tasks"]] == ["record-changed", "record-changed"]
    assert_error(wsn("eval", "--ckpt", ckpt), 1, "the record of task(s) 1, 2 fails its record digest")


def test_a_damaged_record_is_not_used_to_predict(ckpt, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 64), np.float32))
    edit_meta(ckpt, _task(0, "classes", [5, 6]))
    assert_error(wsn("predict", tmp_path / "x.npy", "--ckpt", ckpt, "--task", 1), 1, "record digest")
    assert wsn("predict", tmp_path / "x.npy", "--ckpt", ckpt, "--task", 2).exit_code == 0


def test_a_changed_parameter_is_still_forgetting(ckpt):
    edit_arrays(ckpt, lambda a: a["head/1/bias"].__iadd__(0.5))
    assert_error(wsn("eval", "--ckpt", ckpt), 3, "forgetting detected: the subnetwork of task(s) 1 changed")


def test_a_record_digest_cannot_be_removed(ckpt):
    def drop(m):
        del m["tasks"][0]["record_digest"]

    edit_meta(ckpt, drop)
    assert_error(wsn("eval", "--ckpt", ckpt), 1, "meta.tasks[0].record_digest is missing")


def test_a_format_3_file_cannot_pass_as_format_2(ckpt):
    metadata, arrays = read_parts(ckpt)
    write_parts(ckpt, {**metadata, "version": "2"}, arrays)
    assert_error(wsn("eval", "--ckpt", ckpt), 1, "need format version 3")


# ---- format 2: the golden files of wsn 0.2.0 ----------------------------------------------------------


@pytest.mark.parametrize(("name", "key"), [("v2-digits-wsn-signed", "wsn-golden-key"), ("v2-digits-finetune", None)])
def test_golden_version_2_checkpoints_load_and_evaluate_as_recorded(name, key, monkeypatch):
    if key:
        monkeypatch.setenv("WSN_CHECKPOINT_KEY", key)
    else:
        monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    want = json.loads((GOLDEN / f"{name}.eval.json").read_text())
    result = wsn("eval", "--ckpt", GOLDEN / f"{name}.pt", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["signature"] == want["signature"] and doc["forget_free"]
    for got, expected in zip(doc["tasks"], want["tasks"], strict=True):
        assert (got["task"], got["status"], got["accuracy"]) == (expected["task"], "proven", expected["accuracy"])


def test_a_golden_version_2_checkpoint_grows_into_format_3(tmp_path, monkeypatch):
    """train-task adds a task to a signed format-2 file: written as format 3, the old records keep
    their digest version 2 and get a record digest; every task is still proven and signed."""
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "wsn-golden-key")
    path = tmp_path / "m.pt"
    shutil.copyfile(GOLDEN / "v2-digits-wsn-signed.pt", path)
    result = wsn("train-task", "--task", 2, "--epochs", 1, "--device", "cpu", "-q", "--ckpt", path)
    assert result.exit_code == 0, result.stderr
    from wsncli.engine.store.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    assert loaded.version == 3 and loaded.signature == "verified"
    assert [r.digest_version for r in loaded.tasks] == [2, 2, 3] and all(r.record_digest for r in loaded.tasks)
    doc = json.loads(wsn("eval", "--ckpt", path, "--json").stdout)
    assert [t["status"] for t in doc["tasks"]] == ["proven"] * 3
