"""Ctrl-C (SIGINT) and SIGTERM stop `wsn` cleanly: one line, exit 130 / 143, checkpoint bytes
unchanged, no lock or temporary file left; a task stopped mid-training continues from its snapshot."""

from __future__ import annotations

import signal
import time

from tests.reliability.conftest import (
    assert_one_line_error,
    assert_unlocked,
    leftovers,
    popen_wsn,
    run_python,
    run_wsn,
    tensor_sums,
    train_args,
    wait_for_lock_holder,
)

LONG = 100_000  # epochs: the run is still training whenever the signal comes


def _assert_clean_interrupt(
    proc_rc: int, err: str, path, before: bytes, code: int = 130, snapshot: bool = False
) -> None:
    assert proc_rc == code, err
    assert_one_line_error(err, "interrupted" if code == 130 else "terminated (SIGTERM)")
    assert path.read_bytes() == before
    assert leftovers(path.parent, keep={"m.pt.resume"} if snapshot else ()) == []


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
    _assert_clean_interrupt(proc.returncode, err, ckpt, before, snapshot=True)
    assert_unlocked(ckpt)
    if ckpt.with_name("m.pt.resume").exists():  # an epoch ended before the signal: how to continue it
        assert_one_line_error(err, "task 2's finished epochs are kept in", "m.pt.resume", "--restart")
        assert f"run `wsn {' '.join(map(str, train_args(ckpt, 2, LONG)))}` again" in err


def test_sigint_after_an_epoch_says_how_to_continue(ckpt):
    """Ctrl-C once an epoch's snapshot exists: the line names it and the command that continues."""
    args = [a for a in train_args(ckpt, 2) if a not in ("--epochs", 1)] + ["--epochs", 12, "--batch-size", 2]
    proc = popen_wsn(args, ckpt.parent)
    snapshot = ckpt.with_name("m.pt.resume")
    deadline = time.monotonic() + 240
    while not snapshot.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = assert_one_line_error(err, "interrupted", "task 2's finished epochs are kept in", "--restart")
    assert f"run `wsn {' '.join(map(str, args))}` again to continue" in line


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
    assert_unlocked(ckpt)


def test_sigterm_during_startup(ckpt):
    before = ckpt.read_bytes()
    proc = popen_wsn(train_args(ckpt, 2, LONG), ckpt.parent)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    _assert_clean_interrupt(proc.returncode, err, ckpt, before, code=143)


def test_a_signal_during_an_import_never_raises_inside_it(tmp_path):
    """Once a command runs, SIGINT/SIGTERM raise so it can clean up, but not inside an import: an
    exception raised inside torch's (C++) import aborts the process (exit -6, a C++ trace), which
    SIGTERM half a second into `train-task` did. A signal sent from inside an import (a finder on
    sys.meta_path) must end the process at once with the one line, raising nothing there."""
    for sig, code, line in ((signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")):
        child = (
            "import os, signal, sys\n"
            "from wsncli.interrupts import Terminated, command_started, install_startup_handler\n"
            "install_startup_handler()\n"
            "command_started()\n"
            "class Finder:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name == 'json':\n            os.kill(os.getpid(), {int(sig)})\n"
            "        return None\n"
            "sys.modules.pop('json', None)\n"
            "sys.meta_path.insert(0, Finder())\n"
            "try:\n    import json\nexcept (Terminated, KeyboardInterrupt):\n    print('raised inside the import')\n"
            "print('still running')\n"
        )
        result = run_python(child, tmp_path)
        assert result.returncode == code and result.stdout == "", (result.returncode, result.stdout, result.stderr)
        assert_one_line_error(result.stderr, line)


RESUMABLE = ("--epochs", 12, "--batch-size", 2)  # ~150 steps an epoch: the signal lands mid-run


def test_sigterm_during_training_then_the_task_resumes(ckpt, tmp_path):
    """SIGTERM mid-training: one line, exit 143, checkpoint unchanged, lock and temporaries gone; the
    epoch snapshot stays, and the same command continues from it to the same checkpoint as a run
    that was never stopped."""
    args = [a for a in train_args(ckpt, 2) if a not in ("--epochs", 1)] + list(RESUMABLE)
    before = ckpt.read_bytes()
    proc = popen_wsn(args, ckpt.parent)
    snapshot = ckpt.with_name("m.pt.resume")
    deadline = time.monotonic() + 240
    while not snapshot.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    _assert_clean_interrupt(proc.returncode, err, ckpt, before, code=143, snapshot=True)
    assert snapshot.exists()
    assert_unlocked(ckpt)
    again = run_wsn(args, ckpt.parent)
    assert again.returncode == 0, again.stderr
    assert "resumed after epoch " in again.stdout and leftovers(ckpt.parent) == []
    reference = tmp_path / "ref" / "m.pt"  # the same command, never stopped
    reference.parent.mkdir()
    reference.write_bytes(before)
    whole = run_wsn([reference if a == ckpt else a for a in args], reference.parent)
    assert whole.returncode == 0, whole.stderr
    assert tensor_sums(ckpt) == tensor_sums(reference)
