"""Each benchmark script runs end to end on a tiny setting and prints its table and JSON lines.

Not timed tests: the real runs and their figures are in docs/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.engine.test_data import write_idx

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, timeout: int = 300) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=timeout, cwd=BENCH
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert lines, proc.stdout
    return lines


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A 600/200-image MNIST in the real IDX .gz layout (random pixels, learnable labels)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for split, n in (("train", 600), ("t10k", 200)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        images[np.arange(n), labels, :] = 255  # row `label` lit: a pattern a permuted MLP can learn
        write_idx(folder / f"{split}-images-idx3-ubyte", images, key=f"mnist/{split}-images-idx3-ubyte")
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, key=f"mnist/{split}-labels-idx1-ubyte")
    return tmp_path


def test_pmnist_script(tiny_mnist):
    lines = run_script(
        "pmnist.py",
        "--capacity",
        "0.5",
        "--seeds",
        "0",
        "--tasks",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--data-root",
        str(tiny_mnist),
    )
    run = next(l for l in lines if l["kind"] == "run")
    assert run["bwt"] == 0.0 and run["forget_free"] is True
    assert 0.0 < run["cap"] <= 100.0 + 32 and set(run["per_task"]) == {"1", "2"}


def test_forgetting_script():
    lines = run_script("forgetting.py", "--benchmarks", "split-digits", "--seeds", "0", "--epochs", "1", "--tasks", "2")
    by_method = {l["method"]: l for l in lines if l["kind"] == "forgetting"}
    assert by_method["wsn"]["bwt"] == 0.0 and by_method["wsn"]["forget_free"] is True
    assert by_method["finetune"]["forget_free"] is False  # the dense baseline's old task changed


def test_speed_script():
    lines = run_script("speed.py", "--quick", "--configs", "mlp-100-b10")
    (r,) = lines
    assert r["config"] == "mlp-100-b10" and set(r["ratios"]) == {"wsn", "wsn-torch", "static", "scores", "paper"}
    assert all(v > 0 for v in r["ratios"].values()) and r["wsn_faster_than_paper"] > 0
    assert r["threads"] == 1 and r["clock"] == "cpu" and set(r["ratios_wall"]) == set(r["ratios"])


def test_codec_script():
    lines = run_script("bench_codecs.py", "--weights", "20000", "--repeat", "1")
    codecs = {l.get("codec") for l in lines}
    assert {"context", "ascii7", "ascii7-huffman", "paper-huffman", "packbits"} <= codecs


def test_whole_run_script_with_subnormals_flushed(tiny_mnist):
    lines = run_script(
        "whole_run.py",
        *("--tasks", "1", "--epochs", "1", "--batch-size", "64", "--flush-denormal"),
        *("--data-root", str(tiny_mnist)),
    )
    (r,) = lines
    assert r["kind"] == "whole_run" and r["flush_denormal"] is True and r["ratio_wsn_over_finetune"] > 0
    assert len(r["seconds"]["wsn"]) == len(r["seconds"]["finetune"]) == 1
    assert r["eval"]["wsn"]["forget_free"] is True and set(r["eval"]["wsn"]["per_task"]) == {"1"}


def test_multi_dataset_script(tmp_path):
    from tests.engine.test_data import make_mnist
    from tests.engine.test_multi import make_animal

    make_mnist(tmp_path / "mnist", n_train=100, n_test=30)
    make_mnist(tmp_path / "fashion-mnist", n_train=100, n_test=30, seed=1, dataset="fashion-mnist")
    make_animal(tmp_path / "animal-mnist")
    lines = run_script(
        "multi_dataset.py",
        *("--archs", "mlp", "--capacities", "0.5", "--seeds", "0", "--epochs", "1", "--train-limit", "30"),
        *("--jobs", "1", "--data-root", str(tmp_path)),
    )
    runs = {r["method"]: r for r in lines if r["kind"] == "multi_dataset"}
    assert set(runs) == {"wsn", "finetune"} and set(runs["wsn"]["tasks"]) == {"1", "2", "3", "4"}
    assert runs["wsn"]["bwt"] == 0.0 and runs["wsn"]["forget_free"] is True
    assert runs["wsn"]["tasks"]["1"]["reuse_of_earlier"] == 0.0 and runs["wsn"]["tasks"]["4"]["reuse_of_earlier"] > 0
