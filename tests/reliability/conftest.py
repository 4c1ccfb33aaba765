"""Helpers for the reliability tests: run the installed `wsn`, make checkpoints once per session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

HIDDEN = "64-64"  # small: the subprocess tests spend their time starting up, not training
AFTER_EPOCHS = 3  # long enough that some kill points land in training
TIMEOUT = 240  # seconds any one wsn subprocess may take, even on a loaded 2-core machine


def wsn_command() -> list[str]:
    """The installed console script beside this interpreter, else `wsn` on PATH, else `-m wsncli`."""
    beside = Path(sys.executable).with_name("wsn")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("wsn")
    return [found] if found else [sys.executable, "-m", "wsncli"]


def _child_setup() -> None:
    # Ctrl-C must reach the child even when the test runner was started with SIGINT ignored
    # (a shell's background job): Python only installs KeyboardInterrupt if SIGINT is not ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WSN_DATA_ROOT", "WSN_MAX_CHECKPOINT_BYTES")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1", **extra)
    return env


def popen_wsn(args: list[str], cwd: Path, preexec=None, **env: str) -> subprocess.Popen:
    def setup():
        _child_setup()
        if preexec:
            preexec()

    return subprocess.Popen(
        wsn_command() + [str(a) for a in args],
        cwd=cwd,
        env=child_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=setup,
    )


def run_wsn(
    args: list[str], cwd: Path, timeout: float = TIMEOUT, preexec=None, **env: str
) -> subprocess.CompletedProcess:
    proc = popen_wsn(args, cwd, preexec, **env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_python(code: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """A Python child (for fault injection: patch a function, then run the wsn app)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_child_setup,
    )


def train_args(ckpt: Path, task: int, epochs: int = 1, *more) -> list[str]:
    return ["train-task", "--task", task, "--ckpt", ckpt, "--epochs", epochs, "--hidden", HIDDEN, "-q", *more]


def assert_one_line_error(err: str, *needles: str) -> str:
    """stderr is exactly one `wsn: error: ...` line (no traceback) holding every needle."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("wsn: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def wait_for_lock_holder(lock: Path, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    """Until `proc` has written its pid into the lock file (it then holds the lock and is running)."""
    deadline = time.monotonic() + timeout
    needle = f'"pid": {proc.pid},'
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"wsn exited early ({proc.returncode}): {proc.stderr.read()}")
        try:
            if needle in lock.read_text():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError("wsn never took the lock")


def learned(path: Path) -> list[int]:
    from wsncli.engine.store.checkpoint import load_checkpoint

    return load_checkpoint(path).learned()


def tensor_sums(path: Path) -> dict[str, str]:
    """The checksum of every tensor, from a version-2 file's header."""
    from tests.ckpt_tools import read_parts

    return json.loads(read_parts(path)[0]["checksums"])


def leftovers(folder: Path, keep=()) -> list[str]:
    """Names in `folder` a wsn command may have left: locks, temporaries, snapshots (`keep`: allowed)."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in keep and (p.name.endswith((".lock", ".resume")) or ".tmp-" in p.name)
    )


def assert_unlocked(ckpt: Path) -> None:
    """The lock of `ckpt` is released and its file removed: another writer can take it at once."""
    from wsncli.engine.store.lock import CheckpointLock, lock_path

    assert not lock_path(ckpt).exists(), "the lock file was left behind"
    with CheckpointLock(ckpt):
        pass


@pytest.fixture(scope="session")
def base_ckpt(tmp_path_factory) -> Path:
    """A split-digits checkpoint with task 1, made by the installed `wsn` (do not modify: copy it)."""
    folder = tmp_path_factory.mktemp("base")
    path = folder / "base.pt"
    result = run_wsn(train_args(path, 1), folder)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="session")
def after_ckpt(base_ckpt, tmp_path_factory) -> SimpleNamespace:
    """base + task 2 (3 epochs) by the installed `wsn`: the reference "after" state, with how long
    the uninterrupted command took and its tensors' checksums."""
    folder = tmp_path_factory.mktemp("after")
    path = folder / "m.pt"
    shutil.copyfile(base_ckpt, path)
    start = time.monotonic()
    result = run_wsn(train_args(path, 2, AFTER_EPOCHS), folder)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(path=path, seconds=time.monotonic() - start, sums=tensor_sums(path))


@pytest.fixture
def ckpt(base_ckpt, tmp_path) -> Path:
    """A private copy of the task-1 checkpoint in an empty folder."""
    path = tmp_path / "m.pt"
    shutil.copyfile(base_ckpt, path)
    return path
