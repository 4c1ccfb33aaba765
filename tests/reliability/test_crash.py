"""SIGKILL of a real `wsn train-task` at any moment leaves the checkpoint as before or as after."""

from __future__ import annotations

import random
import shutil
import signal
import time

import torch

from tests.reliability.conftest import (
    AFTER_EPOCHS,
    learned,
    leftovers,
    popen_wsn,
    run_python,
    run_wsn,
    temp_files,
    tensor_sums,
    train_args,
)

KILL_SEED = 20240531
N_KILLS = 8


def _forget_free(path) -> None:
    """Every learned task's subnetwork and test outputs are exactly those recorded at learning."""
    from wsncli.engine.store.checkpoint import load_checkpoint
    from wsncli.engine.usecases.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(load_checkpoint(path), None, None, torch.device("cpu"))
    assert report.forget_free and [t.task for t in report.tasks] == learned(path), report


def _classify(path, before: bytes, after_sums: dict) -> str:
    """'before' (bytes identical) or 'after' (loads, has task 2, bit-identical tensors); else fail."""
    if path.read_bytes() == before:
        return "before"
    assert learned(path) == [1, 2], "a killed run left a checkpoint that is neither old nor new"
    assert tensor_sums(path) == after_sums
    return "after"


def _copy(base, folder):
    folder.mkdir()
    shutil.copyfile(base, folder / "m.pt")
    return folder / "m.pt"


def test_sigkill_at_random_moments_leaves_old_or_new_checkpoint(base_ckpt, after_ckpt, tmp_path):
    before = base_ckpt.read_bytes()
    proof = run_wsn(["eval", "--ckpt", after_ckpt.path, "-q"], tmp_path)  # the real CLI's proof
    assert proof.returncode == 0 and "forget-free: proven (2 tasks" in proof.stdout, proof.stdout + proof.stderr
    rng = random.Random(KILL_SEED)  # spread over start-up, data loading, training and saving
    delays = sorted(rng.uniform(0.05, 1.05 * after_ckpt.seconds) for _ in range(N_KILLS))
    outcomes = []
    for i, delay in enumerate(delays):
        path = _copy(base_ckpt, tmp_path / f"kill{i}")
        proc = popen_wsn(train_args(path, 2, AFTER_EPOCHS), path.parent)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        outcomes.append(_classify(path, before, after_ckpt.sums))
        _forget_free(path)
    assert "before" in outcomes, (delays, outcomes)


# Faults armed only while the checkpoint itself is written (snapshots are written the same way at
# every epoch end, and must not trip them): the wrapper arms `fault`, then writes.
_ARM = """
import wsncli.engine.store.checkpoint as C
import wsncli.engine.store.paths as P
real_write_output = C.write_output
def write_output(target, data, error=None):
    arm()
    return real_write_output(target, data, error)
C.write_output = write_output
"""
SAVE_FAULTS = {
    # SIGKILL with half of the new checkpoint written (and fsynced) to the temporary file
    "mid-write": """
def arm():
    real = os.write
    def half(fd, data):
        real(fd, bytes(data)[: len(data) // 2]); os.fsync(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    os.write = half
""",
    # SIGKILL with the new file complete and fsynced but not yet renamed
    "before-rename": """
def arm():
    os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
""",
    # SIGKILL right after the rename, before the folder is fsynced (and before the snapshot is removed)
    "after-rename": """
def arm():
    P._fsync_dir = lambda folder: os.kill(os.getpid(), signal.SIGKILL)
""",
}
EXPECTED = {"mid-write": "before", "before-rename": "before", "after-rename": "after"}


def _fault_code(fault: str, args: list) -> str:
    return (
        "import os, signal, sys\n"
        + SAVE_FAULTS[fault]
        + _ARM
        + (f"from wsncli.cli import main\nsys.argv = ['wsn'] + {[str(a) for a in args]!r}\nmain()\n")
    )


def test_sigkill_while_saving_then_next_run_cleans_up(base_ckpt, after_ckpt, tmp_path):
    """Deterministic kills inside the save; a later train-task removes the dead writer's temporary
    file, and a snapshot left by a kill after the rename (its task is in the checkpoint) is dropped."""
    from concurrent.futures import ThreadPoolExecutor

    before = base_ckpt.read_bytes()
    paths = {fault: _copy(base_ckpt, tmp_path / fault) for fault in EXPECTED}
    with ThreadPoolExecutor(len(paths)) as pool:  # independent children: run them side by side
        results = dict(
            zip(
                paths,
                pool.map(
                    lambda f: run_python(_fault_code(f, train_args(paths[f], 2, AFTER_EPOCHS)), paths[f].parent), paths
                ),
            )
        )
    for fault, expected in EXPECTED.items():
        assert results[fault].returncode == -signal.SIGKILL, (fault, results[fault].stderr)
        assert _classify(paths[fault], before, after_ckpt.sums) == expected, fault
        _forget_free(paths[fault])
    # the kills before the rename left their temporary file (and the task's snapshot); the next run
    # (same task) removes the temporary, continues from the snapshot and saves the same checkpoint
    for fault in ("mid-write", "before-rename"):
        path = paths[fault]
        assert temp_files(path.parent), f"{fault}: the fault did not leave a temporary file behind"
        assert (path.parent / "m.pt.resume").exists()
        again = run_wsn(train_args(path, 2, AFTER_EPOCHS), path.parent)
        assert again.returncode == 0, again.stderr
        assert (
            f"resumed after epoch {AFTER_EPOCHS - 1}" in again.stdout
        )  # snapshots at the end of every epoch but the last
        assert leftovers(path.parent) == []
        assert learned(path) == [1, 2] and tensor_sums(path) == after_ckpt.sums
        _forget_free(path)
    # killed after the rename: task 2 is saved, its snapshot is stale; learning task 3 drops it
    path = paths["after-rename"]
    assert leftovers(path.parent) == ["m.pt.lock", "m.pt.resume"]  # a killed holder cannot remove its lock file
    nxt = run_wsn(train_args(path, 3), path.parent)
    assert nxt.returncode == 0, nxt.stderr
    assert leftovers(path.parent) == [] and learned(path) == [1, 2, 3]
