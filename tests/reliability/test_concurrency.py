"""Two `train-task` on one checkpoint: the second fails fast naming the holder; no task is lost."""

from __future__ import annotations

import fcntl
import os
import signal
import time

from tests.reliability.conftest import (
    assert_one_line_error,
    learned,
    leftovers,
    popen_wsn,
    run_wsn,
    train_args,
    wait_for_lock_holder,
)

FAST = 20  # seconds: "fails fast", generous for a loaded machine (start-up dominates)


def test_second_writer_fails_fast_naming_the_holder(ckpt):
    before = ckpt.read_bytes()
    holder = popen_wsn(train_args(ckpt, 2, 100_000), ckpt.parent)
    try:
        wait_for_lock_holder(ckpt.with_name("m.pt.lock"), holder)
        start = time.monotonic()
        second = run_wsn(train_args(ckpt, 3), ckpt.parent)
        assert time.monotonic() - start < FAST
        assert second.returncode == 1, second.stderr
        assert_one_line_error(second.stderr, f"pid {holder.pid}", "in use")
        assert ckpt.read_bytes() == before
    finally:
        holder.send_signal(signal.SIGINT)
        holder.communicate(timeout=120)
    assert holder.returncode == 130 and ckpt.read_bytes() == before
    retry = run_wsn(train_args(ckpt, 3, 1, "--restart"), ckpt.parent)  # the holder's snapshot of task 2 is discarded
    assert retry.returncode == 0, retry.stderr
    assert learned(ckpt) == [1, 3]


def test_racing_writers_lose_no_task(ckpt):
    """Started together: each either learns its task or fails with the lock message; every task
    whose command succeeded is in the final checkpoint."""
    procs = {task: popen_wsn(train_args(ckpt, task), ckpt.parent) for task in (2, 3)}
    outs = {task: p.communicate(timeout=240) for task, p in procs.items()}
    codes = {task: p.returncode for task, p in procs.items()}
    assert set(codes.values()) <= {0, 1} and 0 in codes.values(), outs
    for task, code in codes.items():
        if code == 1:
            assert_one_line_error(outs[task][1], "in use by pid")
    succeeded = [t for t, c in codes.items() if c == 0]
    assert sorted(learned(ckpt)) == sorted([1, *succeeded])


def test_lock_of_a_killed_process_does_not_block(ckpt):
    holder = popen_wsn(train_args(ckpt, 2, 100_000), ckpt.parent)
    wait_for_lock_holder(ckpt.with_name("m.pt.lock"), holder)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    lock = ckpt.with_name("m.pt.lock")
    assert f'"pid": {holder.pid},' in lock.read_text()  # the dead holder's note is still there...
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ...but the kernel released its flock
    finally:
        os.close(fd)
    result = run_wsn(train_args(ckpt, 2, 1, "--restart"), ckpt.parent)  # other epochs than the killed run's snapshot
    assert result.returncode == 0, result.stderr
    assert learned(ckpt) == [1, 2] and leftovers(ckpt.parent) == []
