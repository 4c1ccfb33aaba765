"""Data-parallel training with torchrun: 2 real gloo processes on the CPU, split-digits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsncli.engine.store.checkpoint import checkpoint_arrays, load_checkpoint

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WSN_DATA_ROOT",)}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "wsncli",
        *map(str, args),
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _single(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WSN_DATA_ROOT", "WORLD_SIZE", "RANK")}
    return subprocess.run(
        [sys.executable, "-m", "wsncli", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_two_processes_train_what_one_does_and_eval_proves_it(tmp_path):
    for task in (1, 2):
        proc = _torchrun(tmp_path, "train-task", "--task", task, "--ckpt", "par.pt", "--epochs", 2, "-q")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count(f"learned task {task}") == 1  # rank 0 reports, once
        proc = _single(tmp_path, "train-task", "--task", task, "--ckpt", "one.pt", "--epochs", 2, "-q")
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "par.pt"]  # no lock, snapshot or temporary left
    proc = _single(tmp_path, "eval", "--ckpt", "par.pt", "--json")
    assert proc.returncode == 0 and '"forget_free":true' in proc.stdout, proc.stdout + proc.stderr
    par, one = load_checkpoint(tmp_path / "par.pt"), load_checkpoint(tmp_path / "one.pt")
    assert [r.world_size for r in par.tasks] == [2, 2] and [r.world_size for r in one.tasks] == [1, 1]
    a, b = checkpoint_arrays(par), checkpoint_arrays(one)
    for name in ("layer/layers.0/weight", "layer/layers.1/scores", "head/2/weight"):
        np.testing.assert_allclose(a[name], b[name], atol=1e-4, err_msg=name)  # the same run, up to reduction order
    agree = np.mean([(par.masks[t][n] == one.masks[t][n]).float().mean().item() for t in (1, 2) for n in par.masks[t]])
    assert agree > 0.99


def test_a_refusal_ends_every_process_with_the_same_code(tmp_path):
    assert _torchrun(tmp_path, "train-task", "--task", 1, "--ckpt", "m.pt", "--epochs", 1, "-q").returncode == 0
    before = (tmp_path / "m.pt").read_bytes()
    proc = _torchrun(tmp_path, "train-task", "--task", 1, "--ckpt", "m.pt", "--epochs", 1, "-q")
    assert proc.returncode != 0
    assert (
        proc.stderr.count("wsn: error:") == 2 and "task 1 is already learned" in proc.stderr
    )  # both ranks, one line each
    assert (tmp_path / "m.pt").read_bytes() == before
