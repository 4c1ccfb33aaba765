"""Long tasks survive a kill: a snapshot at every epoch end, and a re-run continues from it with the
same bits on the CPU as an uninterrupted run. Real subprocesses, killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.ckpt_tools import read_parts
from tests.cli.helpers import assert_error, wsn
from wsncli.engine.store.checkpoint import checkpoint_arrays, load_checkpoint

ARGS = ("train-task", "--task", 2, "--epochs", 6, "--batch-size", 2, "--hidden", "32-32", "-q")
pytestmark = pytest.mark.slow


def _cmd(ckpt: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "wsncli", *map(str, ARGS), "--ckpt", str(ckpt), *map(str, extra)]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "WSN_DATA_ROOT"}


def _snapshot_epoch(path: Path) -> int | None:
    try:
        metadata, _ = read_parts(path)
        return json.loads(metadata["state"])["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def _kill_after_epoch(ckpt: Path, epoch: int) -> int:
    """Start train-task, SIGKILL it once its snapshot holds `epoch`; returns the snapshot's epoch."""
    snap = ckpt.with_name(ckpt.name + ".resume")
    proc = subprocess.Popen(_cmd(ckpt), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _snapshot_epoch(snap) if snap.exists() else None
            if seen is not None and seen >= epoch:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "train-task ended before it could be killed between epochs"
    return _snapshot_epoch(snap)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return checkpoint_arrays(load_checkpoint(path))


def test_a_killed_task_resumes_bit_identical_to_an_uninterrupted_run(tmp_path):
    first = ["train-task", "--task", 1, "--epochs", 2, "--hidden", "32-32", "-q"]
    for name in ("whole.pt", "killed.pt"):
        assert (
            subprocess.run(
                [sys.executable, "-m", "wsncli", *map(str, first), "--ckpt", str(tmp_path / name)], env=_env()
            ).returncode
            == 0
        )
    assert subprocess.run(_cmd(tmp_path / "whole.pt"), env=_env()).returncode == 0
    killed = tmp_path / "killed.pt"
    before = killed.read_bytes()
    epoch = _kill_after_epoch(killed, 2)
    assert killed.read_bytes() == before  # the checkpoint is written only when the task completes
    assert 2 <= epoch < 6
    metadata, _ = read_parts(killed.with_name("killed.pt.resume"))
    before_stop = json.loads(metadata["state"])["seconds"]  # the training time of the killed part
    assert before_stop > 0
    proc = subprocess.run(_cmd(killed), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed after epoch {epoch}" in proc.stdout
    assert not killed.with_name("killed.pt.resume").exists()  # removed once the task is saved
    a, b = _arrays(tmp_path / "whole.pt"), _arrays(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    ra, rb = load_checkpoint(tmp_path / "whole.pt").task_record(2), load_checkpoint(killed).task_record(2)
    assert rb.train_seconds >= before_stop  # both parts counted, not only the resumed one
    assert (ra.accuracy, ra.best_epoch, ra.subnet_digest, ra.outputs_digest) == (
        rb.accuracy,
        rb.best_epoch,
        rb.subnet_digest,
        rb.outputs_digest,
    )


def test_a_snapshot_made_with_other_settings_is_refused_and_restart_discards_it(tmp_path):
    ckpt = tmp_path / "m.pt"
    _kill_after_epoch(ckpt, 1)
    snap = ckpt.with_name("m.pt.resume")
    assert snap.exists() and not ckpt.exists()
    result = wsn(*ARGS[:-1], "--ckpt", ckpt, "--lr", "0.01")
    line = assert_error(result, 1, "m.pt.resume holds task 2 trained with other settings or data", "lr", "--restart")
    assert "differ" in line and snap.exists() and not ckpt.exists()
    # another task is blocked by the pending one: the message names it and both ways on
    line = assert_error(
        wsn(*ARGS[:-1], "--ckpt", ckpt, "--task", 3), 1, "m.pt.resume holds task 2, stopped after epoch"
    )
    assert f"finish it with `wsn train-task -c {ckpt} -t 2`" in line
    assert f"discard it with `wsn train-task -c {ckpt} -t 3 --restart`" in line
    result = wsn(*ARGS[:-1], "--ckpt", ckpt, "--lr", "0.01", "--restart", "--epochs", 1)
    assert result.exit_code == 0, result.stderr
    assert not snap.exists() and load_checkpoint(ckpt).task_record(2).lr == 0.01


def test_a_damaged_snapshot_is_refused_with_one_line(tmp_path):
    ckpt = tmp_path / "m.pt"
    _kill_after_epoch(ckpt, 1)
    snap = ckpt.with_name("m.pt.resume")
    raw = bytearray(snap.read_bytes())
    raw[-20] ^= 0xFF
    snap.write_bytes(bytes(raw))
    assert_error(wsn(*ARGS[:-1], "--ckpt", ckpt), 1, "m.pt.resume", "--restart")
