"""Standard output that cannot take what `wsn` writes (a full device, a closed descriptor, a reader
that went away), and signals that come once the command's files are written: one line, an exit
code that tells the truth, no traceback, and the message says what was written."""

from __future__ import annotations

import os
import subprocess

from tests.reliability.conftest import (
    assert_one_line_error,
    assert_unlocked,
    child_env,
    learned,
    leftovers,
    popen_wsn,
    run_python,
    run_wsn,
    train_args,
    wsn_command,
)


def test_a_full_stdout_after_training_says_the_checkpoint_was_written(ckpt):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            wsn_command() + [str(a) for a in train_args(ckpt, 2)],
            cwd=ckpt.parent,
            env=child_env(),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=240,
        )
    assert proc.returncode == 1
    assert_one_line_error(
        proc.stderr, "cannot write to standard output: No space left on device", f"{ckpt} written and complete"
    )
    assert learned(ckpt) == [1, 2]
    assert leftovers(ckpt.parent) == []
    assert_unlocked(ckpt)


def test_a_full_stdout_for_json_and_tables_is_one_line(ckpt):
    for args in (["eval", "--ckpt", ckpt, "--json"], ["inspect", ckpt], ["pack-masks", "--ckpt", ckpt, "-o", "-"]):
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                wsn_command() + [str(a) for a in args],
                cwd=ckpt.parent,
                env=child_env(),
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=240,
            )
        assert proc.returncode == 1, args
        line = assert_one_line_error(proc.stderr, "cannot write to standard output: No space left on device")
        assert "written" not in line  # nothing was


def test_a_closed_stdout_is_one_line(ckpt):
    result = run_wsn(["inspect", ckpt, "--json"], ckpt.parent, preexec=lambda: os.close(1))
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "standard output is closed")


def test_a_reader_that_goes_away_ends_wsn_quietly_with_141(ckpt):
    proc = popen_wsn(["eval", "--ckpt", ckpt, "--json"], ckpt.parent)
    proc.stdout.close()  # like `wsn eval ... | true`: gone before wsn writes
    err = proc.stderr.read()
    assert proc.wait(timeout=240) == 141
    assert err == ""


def test_an_interrupt_after_the_rename_names_the_written_checkpoint(ckpt):
    """Ctrl-C lands right after the new checkpoint replaced the old one (injected at the folder's fsync)."""
    code = (
        "import sys\n"
        "from wsncli.engine.store import paths\n"
        "def interrupted(folder): raise KeyboardInterrupt\n"
        "paths._fsync_dir = interrupted\n"
        "from wsncli.cli import main\n"
        f"sys.argv = ['wsn'] + {[str(a) for a in train_args(ckpt, 2)]!r}\n"
        "main()\n"
    )
    result = run_python(code, ckpt.parent)
    assert result.returncode == 130
    assert_one_line_error(result.stderr, f"interrupted after writing {ckpt} (complete); nothing else was changed")
    assert learned(ckpt) == [1, 2]
    assert_unlocked(ckpt)


def test_a_signal_once_the_work_is_done_changes_nothing(ckpt):
    """SIGINT and SIGTERM while the interpreter shuts down (after the output is written): exit 0, silent."""
    for signame in ("SIGINT", "SIGTERM"):
        code = (
            "import atexit, os, signal, sys\n"
            f"atexit.register(lambda: os.kill(os.getpid(), signal.{signame}))\n"
            "from wsncli.cli import main\n"
            f"sys.argv = ['wsn', 'inspect', {str(ckpt)!r}]\n"
            "main()\n"
        )
        result = run_python(code, ckpt.parent)
        assert result.returncode == 0, (signame, result.stderr)
        assert result.stderr == "", signame
        assert "wsn-checkpoint v3" in result.stdout
