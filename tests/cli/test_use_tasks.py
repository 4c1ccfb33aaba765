"""After training: `wsn predict`, `wsn export` (.pt2 and .safetensors, loaded without wsn) and `wsn report`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from wsncli.engine.data.registry import load_task
from wsncli.engine.store.checkpoint import load_checkpoint

# Loads an export with wsn unreachable: -I (isolated: no cwd, no PYTHONPATH) and a meta-path blocker.
NO_WSN = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("wsncli", "formats"):
            raise ImportError("wsn is not available here")
sys.meta_path.insert(0, Block())
import numpy as np, torch
torch.set_num_threads(1)
kind, path, inputs, result = sys.argv[1:5]
x = torch.from_numpy(np.load(inputs))
if kind == "pt2":
    logits = torch.export.load(path).module()(x)
else:
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    graph, inputs_of = json.loads(meta["graph"]), json.loads(meta["inputs"])
    env = {}
    def value(a):
        if isinstance(a, list):
            return [value(v) for v in a]
        if isinstance(a, dict):
            if "node" in a:
                return env[a["node"]]
            if "dtype" in a:
                return getattr(torch, a["dtype"])
            if "device" in a:
                return torch.device(a["device"])
            if "layout" in a:
                return getattr(torch, a["layout"])
            if "memory_format" in a:
                return getattr(torch, a["memory_format"])
        return a
    for node in graph:
        if node["op"] == "placeholder":
            env[node["name"]] = tensors[inputs_of[node["name"]]] if node["name"] in inputs_of else x
        elif node["op"] == "call_function":
            ns, op, overload = node["target"].split(".")
            fn = getattr(getattr(getattr(torch.ops, ns), op), overload)
            env[node["name"]] = fn(*value(node["args"]), **{k: value(v) for k, v in node["kwargs"].items()})
        elif node["op"] == "output":
            logits = value(node["args"])[0][0]
assert not any(m.split(".")[0] in ("wsncli", "formats") for m in sys.modules)
np.save(result, logits.detach().numpy())
"""


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Raw split-digits test inputs of task 1 (uint8 pixels 0..16, as the data is stored)."""
    path = tmp_path / "x.npy"
    np.save(path, load_task("split-digits", 1).raw_test[:40])
    return path


def test_predict_gives_the_tasks_own_accuracy_in_its_own_labels(digits_ckpt, tmp_path):
    data = load_task("split-digits", 3)
    path = tmp_path / "x3.npy"
    np.save(path, data.raw_test)
    doc = json_out(wsn("predict", path, "--ckpt", digits_ckpt, "--task", 3, "--json"))
    assert doc["schema"] == "wsn.predict/1" and doc["classes"] == [4, 5] and doc["n"] == len(data.y_test)
    truth = np.asarray([4, 5])[data.y_test]
    accuracy = float((np.asarray(doc["predictions"]) == truth).mean())
    assert accuracy == load_checkpoint(digits_ckpt).task_record(3).accuracy  # the same function as at learning
    out = tmp_path / "p.npy"
    assert_ok(wsn("predict", path, "-c", digits_ckpt, "-t", 3, "--proba", "-o", out))
    probs = np.load(out)
    assert probs.shape == (len(data.y_test), 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (np.asarray([4, 5])[probs.argmax(1)] == np.asarray(doc["predictions"])).all()


def test_predict_accepts_images_shaped_samples_for_a_flat_network(digits_ckpt, inputs, tmp_path):
    flat = json_out(wsn("predict", inputs, "-c", digits_ckpt, "-t", 1, "--json"))["predictions"]
    square = tmp_path / "square.npz"
    np.savez(square, x=np.load(inputs).reshape(-1, 8, 8))
    assert json_out(wsn("predict", square, "-c", digits_ckpt, "-t", 1, "--json"))["predictions"] == flat


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: np.save(p, np.zeros((3, 7), np.float32)),
            "inputs have shape (7,) per sample, the task's network takes (64,)",
        ),
        (lambda p: np.save(p, np.full((2, 64), np.nan, np.float32)), "inputs contain NaN or infinite values"),
        (lambda p: p.write_text("1,2,3\n"), "not an input file wsn reads"),
        (lambda p: np.save(p, np.array(["a"] * 64).reshape(1, 64)), "inputs have dtype <U1; they must be numbers"),
    ],
    ids=["shape", "nan", "text", "strings"],
)
def test_predict_refuses_bad_inputs_with_one_line(digits_ckpt, tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    assert_error(wsn("predict", path, "-c", digits_ckpt, "-t", 1), 1, message)
    assert_error(wsn("predict", path, "-c", digits_ckpt, "-t", 9), 1)


def _without_wsn(kind: str, path: Path, inputs: Path) -> np.ndarray:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    result = path.with_name(f"logits-{kind}.npy")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", NO_WSN, kind, str(path), str(inputs), str(result)],
        capture_output=True,
        timeout=300,
        env=env,
        cwd=path.parent,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return np.load(result)


@pytest.mark.parametrize("suffix", [".pt2", ".safetensors"])
def test_exports_load_without_wsn_and_agree_with_predict_bit_for_bit(digits_ckpt, inputs, tmp_path, suffix):
    out = tmp_path / f"task1{suffix}"
    doc = json_out(wsn("export", "-c", digits_ckpt, "-t", 1, "-o", out, "--json"))
    assert doc["schema"] == "wsn.export/1" and doc["format"] == suffix[1:] and doc["bytes"] == out.stat().st_size
    logits = _without_wsn(suffix[1:], out, inputs)
    predicted = json_out(wsn("predict", inputs, "-c", digits_ckpt, "-t", 1, "--proba", "--json"))
    classes = np.asarray(predicted["classes"])
    assert (classes[logits.argmax(1)] == np.asarray(predicted["predictions"])).all()
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    assert np.array_equal(probs.astype(np.float32), np.asarray(predicted["probabilities"], np.float32))  # the same bits


def test_export_refusals(digits_ckpt, tmp_path):
    assert_error(wsn("export", "-c", digits_ckpt, "-t", 1, "-o", tmp_path / "t.onnx"), 2, "export writes .pt2")
    assert_error(wsn("export", "-c", digits_ckpt, "-t", 9, "-o", tmp_path / "t.pt2"), 1, "task 9 is not learned")
    (tmp_path / "notes.pt2").write_text("my notes")
    assert_error(wsn("export", "-c", digits_ckpt, "-t", 1, "-o", tmp_path / "notes.pt2"), 1, "pass --force")
    assert (tmp_path / "notes.pt2").read_text() == "my notes"


def test_report_writes_plots_markdown_and_csv(digits_ckpt, tmp_path):
    out = tmp_path / "report"
    doc = json_out(wsn("report", "-c", digits_ckpt, "-o", out, "--json"))
    assert doc["schema"] == "wsn.report/1"
    names = sorted(Path(f).name for f in doc["files"])
    assert names == sorted(
        [
            "report.md",
            "accuracy_matrix.csv",
            "accuracy_matrix.png",
            "accuracy_over_time.png",
            "capacity_per_layer.png",
            "mask_density_and_reuse.png",
        ]
    )
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "accuracy_matrix.csv").read_text().splitlines()
    assert rows[0] == "after_task,task_2,task_1,task_3" and len(rows) == 4
    ckpt = load_checkpoint(digits_ckpt)
    assert float(rows[3].split(",")[1]) == pytest.approx(ckpt.task_record(3).accuracy_row[0])  # task 2 after task 3
    md = (out / "report.md").read_text()
    assert md.startswith("# wsn report") and "![" in md and "accuracy_matrix.csv" in md
    assert_ok(wsn("report", "-c", digits_ckpt, "-o", out))  # its own files are overwritten without --force
    (out / "report.md").write_text("my own notes")
    assert_error(wsn("report", "-c", digits_ckpt, "-o", out), 1, "pass --force")
    assert (out / "report.md").read_text() == "my own notes"


def test_report_of_a_finetune_checkpoint_has_no_mask_plots(finetune_ckpt, tmp_path):
    doc = json_out(wsn("report", "-c", finetune_ckpt, "-o", tmp_path / "r", "--json"))
    assert {Path(f).name for f in doc["files"]} == {
        "report.md",
        "accuracy_matrix.csv",
        "accuracy_matrix.png",
        "accuracy_over_time.png",
    }


def test_report_without_matplotlib_names_the_extra(digits_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_error(wsn("report", "-c", digits_ckpt, "-o", tmp_path / "r"), 1, "pip install 'wsn[plot]'")
    assert not (tmp_path / "r").exists()


def test_json_documents_validate_against_their_schemas(digits_ckpt, inputs, tmp_path):
    import msgspec

    from wsncli.commands.schemas import DOCUMENTS

    packed = tmp_path / "m.wsnm"
    runs = {
        "eval": ("eval", "-c", digits_ckpt, "--json"),
        "inspect": ("inspect", digits_ckpt, "--json"),
        "pack-masks": ("pack-masks", "-c", digits_ckpt, "-o", packed, "--json"),
        "unpack-masks": ("unpack-masks", packed, "--json"),
        "predict": ("predict", inputs, "-c", digits_ckpt, "-t", 1, "--json"),
        "export": ("export", "-c", digits_ckpt, "-t", 1, "-o", tmp_path / "t.pt2", "--json"),
        "report": ("report", "-c", digits_ckpt, "-o", tmp_path / "rep", "--json"),
        "train-task": ("train-task", "-c", digits_ckpt, "-t", 5, "--epochs", 1, "--json"),
    }
    assert set(runs) == set(DOCUMENTS)
    for command, args in runs.items():
        line = json_out(wsn(*args))
        assert line["schema"] == f"wsn.{command}/1"
        msgspec.convert(line, DOCUMENTS[command], strict=True)  # exactly the documented fields and types
    packed_doc = json_out(wsn("inspect", packed, "--json"))
    assert packed_doc["kind"] == "packed-masks"
    msgspec.convert(packed_doc, DOCUMENTS["inspect"], strict=True)


def test_docs_json_md_holds_every_schema():
    from wsncli.commands.schemas import DOCUMENTS, json_schema_text

    doc = (Path(__file__).resolve().parents[2] / "docs" / "JSON.md").read_text()
    for command in DOCUMENTS:
        assert f"wsn.{command}/1" in doc
        assert json_schema_text(command) in doc, (
            f"docs/JSON.md is out of date for {command}: python -m wsncli.commands.schemas"
        )
