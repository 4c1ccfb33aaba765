"""Ctrl-C (SIGINT) stops `wsn` cleanly: one line, exit 130, checkpoint bytes unchanged, no temp files."""

from __future__ import annotations

import fcntl
import os
import signal
import time

from tests.reliability.conftest import assert_one_line_error, popen_wsn, run_python, temp_files, train_args, wait_for_lock_holder

LONG = 100_000  # epochs: the run is still training whenever the signal comes


def _assert_clean_interrupt(proc_rc: int, err: str, path, before: bytes) -> None:
    assert proc_rc == 130, err
    assert_one_line_error(err, "interrupted")
    assert path.read_bytes() == before
    assert temp_files(path.parent) == []


def _assert_unlocked(path) -> None:
    fd = os.open(str(path) + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the interrupted run still held it
    finally:
        os.close(fd)


def test_sigint_during_startup(ckpt):
    """While Python imports torch and parses options: no traceback from inside an import."""
    before = ckpt.read_bytes()
    proc = popen_wsn(train_args(ckpt, 2, LONG), ckpt.parent)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    _assert_clean_interrupt(proc.returncode, err, ckpt, before)


def test_sigint_during_training(ckpt):
    before = ckpt.read_bytes()
    proc = popen_wsn(train_args(ckpt, 2, LONG), ckpt.parent)
    wait_for_lock_holder(ckpt.with_name("m.pt.lock"), proc)
    time.sleep(1.0)  # past data loading, into the epochs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    _assert_clean_interrupt(proc.returncode, err, ckpt, before)
    _assert_unlocked(ckpt)


def test_sigint_while_saving(ckpt):
    """Ctrl-C in the middle of writing the temporary file (injected at its fsync)."""
    before = ckpt.read_bytes()
    code = (
        "import os, sys\n"
        "def interrupted(fd): raise KeyboardInterrupt\n"
        "os.fsync = interrupted\n"
        "from wsncli.cli import main\n"
        f"sys.argv = ['wsn'] + {[str(a) for a in train_args(ckpt, 2)]!r}\n"
        "main()\n"
    )
    result = run_python(code, ckpt.parent)
    _assert_clean_interrupt(result.returncode, result.stderr, ckpt, before)
    _assert_unlocked(ckpt)
