"""Data-parallel runs that are restarted, spread over two launchers, fail or are stopped (torchrun, gloo).

The references are fresh 2-process runs (tests/engine/conftest.py): `--restart` five times in a row
and two launchers acting as two machines must save split-digits task 1 with every tensor
bit-identical to `fresh_pair`'s, torchrun restarting its workers after one was killed must save
`conv_pair`'s. Faults are injected by tests/engine/parallel_inject.py, a wrapper of `wsn` used only here.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tests.engine.conftest import CONV_STEPS_PER_EPOCH, REFERENCE, conv_args
from tests.engine.torchrun import (
    assert_same_bits,
    copy,
    exit_codes,
    finish,
    free_port,
    leftovers,
    start,
    torchrun,
    torchrun_cmd,
    worker_traceback,
)
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.training.loop import TrainCallbacks

pytestmark = pytest.mark.slow


class _Stop(Exception):
    pass


def _snapshot_after_epoch_1(folder) -> None:
    """m.pt.resume as a run of the reference request stopped in its second epoch leaves it."""

    def stop(epoch: int, _n: int) -> None:
        if epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        from wsncli.engine.usecases.learn import TaskRequest, learn_task

        request = TaskRequest(ckpt=folder / "m.pt", task=1, epochs=2, matrix=False, device="cpu", threads=1)
        learn_task(request, TrainCallbacks(on_epoch_start=stop))
    assert (folder / "m.pt.resume").exists() and not (folder / "m.pt").exists()


def test_restart_five_times_in_a_row_reads_no_snapshot_and_trains_the_fresh_run(fresh_pair, tmp_path):
    """Under --restart only rank 0 looks at the snapshot (to discard it); no run hangs, every run
    saves the fresh run's bits."""
    _snapshot_after_epoch_1(tmp_path)
    shutil.move(tmp_path / "m.pt.resume", tmp_path / "snapshot")
    log = tmp_path / "looked-at-snapshot.log"
    for attempt in range(5):
        shutil.copyfile(tmp_path / "snapshot", tmp_path / "m.pt.resume")
        (tmp_path / "m.pt").unlink(missing_ok=True)
        proc = torchrun(
            tmp_path, "train-task", "--ckpt", "m.pt", *REFERENCE, "--restart", inject=True, timeout=120,
            WSN_TEST_SNAPSHOT_LOG=str(log),
        )  # fmt: skip
        assert proc.returncode == 0, f"attempt {attempt}: {proc.stdout + proc.stderr}"
        assert "resumed" not in proc.stdout
        assert log.read_text().split() == ["0"] * (attempt + 1), "only rank 0 looks at the snapshot"
        assert_same_bits(tmp_path / "m.pt", fresh_pair.par)
        assert leftovers(tmp_path, {"m.pt", "snapshot", log.name}) == []


def test_torchrun_restarts_resume_from_the_snapshot_and_save_the_same_bits(conv_pair, images, tmp_path):
    """conv (BatchNorm, dropout) under --max-restarts 1, one worker killed in the second epoch: torchrun
    restarts every worker with the same command line; they agree to resume after epoch 1 and save the
    uninterrupted run's bits (the dropout masks of epoch 2 are drawn again from (seed, task, epoch))."""
    proc = torchrun(
        tmp_path, "train-task", "--ckpt", "m.pt", *conv_args(images), inject=True, timeout=200,
        launcher=("--max-restarts", "1", "--master-addr", "127.0.0.1", "--master-port", str(free_port())),
        WSN_TEST_FAULT="kill", WSN_TEST_FAULT_RANK="1", WSN_TEST_FAULT_STEP=str(CONV_STEPS_PER_EPOCH + 2),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("learned task 1") == 1 and "resumed after epoch 1" in proc.stdout
    assert_same_bits(tmp_path / "m.pt", conv_pair.par)
    assert leftovers(tmp_path, {"m.pt"}) == []


def test_two_launchers_act_as_two_machines_and_only_the_global_rank_0_writes(fresh_pair, tmp_path):
    """Two torchrun launchers (--nnodes 2, one process each) meet by c10d rendezvous on 127.0.0.1."""
    port, run_id = free_port(), f"wsn-test-{os.getpid()}"
    launcher = (
        "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id,
    )  # fmt: skip
    cmd = torchrun_cmd("train-task", "--ckpt", "m.pt", *REFERENCE, nproc=1, launcher=launcher)
    nodes = [start(cmd, tmp_path) for _ in range(2)]
    runs = [finish(node, 200) for node in nodes]
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    assert sum(run.stdout.count("learned task 1") for run in runs) == 1  # the global rank 0 reports
    assert [r.world_size for r in load_checkpoint(tmp_path / "m.pt").tasks] == [2]
    assert_same_bits(tmp_path / "m.pt", fresh_pair.par)
    assert leftovers(tmp_path, {"m.pt"}) == []


def test_an_error_on_one_process_ends_every_process_alike_and_changes_nothing(fresh_pair, tmp_path):
    """A RuntimeError (not a WsnError) on rank 1 in its second step: every process prints the same one
    line naming rank 1 and the error, no traceback, and exits 1; the checkpoint is as it was."""
    ckpt = copy(fresh_pair.par, tmp_path)
    before = ckpt.read_bytes()
    start = time.monotonic()
    proc = torchrun(
        tmp_path, "train-task", "--task", 2, "--ckpt", ckpt.name, "--epochs", 1, "--threads", 1, "-q",
        inject=True, timeout=120, WSN_TEST_FAULT="raise", WSN_TEST_FAULT_RANK="1", WSN_TEST_FAULT_STEP="2",
    )  # fmt: skip
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    line = "wsn: error: rank 1 failed: RuntimeError: injected failure at step 2"
    assert [l for l in proc.stderr.splitlines() if l.startswith("wsn:")] == [line, line], proc.stderr
    assert exit_codes(proc.stderr) == [1, 1], proc.stderr
    assert not worker_traceback(proc.stderr + proc.stdout)
    assert ckpt.read_bytes() == before and leftovers(tmp_path, {ckpt.name}) == []


def test_sigterm_reaches_every_process_even_while_they_wait_in_a_collective(fresh_pair, tmp_path):
    """Rank 1 blocks in a receive no one answers and rank 0 in its gradient all-reduce: both in C code,
    where Python's signal handlers cannot run. SIGTERM to torchrun still ends both within seconds,
    one line each, exit 143, and the checkpoint is as it was."""
    ckpt = copy(fresh_pair.par, tmp_path)
    before, mark = ckpt.read_bytes(), tmp_path / "hanging"
    cmd = torchrun_cmd("train-task", "--task", 2, "--ckpt", ckpt.name, "--epochs", 1, "--threads", 1, "-q", inject=True)
    extra = dict(WSN_TEST_FAULT="hang", WSN_TEST_FAULT_RANK="1", WSN_TEST_FAULT_STEP="2", WSN_TEST_MARK=str(mark))
    launcher = start(cmd, tmp_path, **extra)
    deadline = time.monotonic() + 120
    while not mark.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not mark.exists():
        raise AssertionError(finish(launcher, 5))
    time.sleep(1.0)  # rank 0 reaches its all-reduce and waits there
    signalled = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    err = finish(launcher, 25).stderr  # torchrun itself would SIGKILL its workers only after 30 s
    assert time.monotonic() - signalled < 20
    lines = [l for l in err.splitlines() if l.startswith("wsn:")]
    assert lines == ["wsn: error: terminated (SIGTERM); files are as they were before the command"] * 2, err
    assert exit_codes(err) in ([], [143, 143]), err
    assert ckpt.read_bytes() == before and leftovers(tmp_path, {ckpt.name, mark.name}) == []
