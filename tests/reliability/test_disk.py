"""Full disk, file-size limit, read-only folder: one line, exit 1, old checkpoint intact, no temp files."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.reliability.conftest import assert_one_line_error, run_wsn, temp_files, train_args

ROOT = os.geteuid() == 0


def _file_size_limit(limit: int):
    """preexec: writes past `limit` bytes fail with EFBIG (like a full disk) instead of SIGXFSZ."""

    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_write_failure_existing_checkpoint_is_untouched(ckpt):
    before = ckpt.read_bytes()
    result = run_wsn(train_args(ckpt, 2), ckpt.parent, preexec=_file_size_limit(16 * 1024))
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, str(ckpt), "cannot write", "File too large", "unchanged")
    assert ckpt.read_bytes() == before
    assert temp_files(ckpt.parent) == []


def test_write_failure_new_checkpoint_is_not_created(tmp_path):
    path = tmp_path / "new.pt"
    result = run_wsn(train_args(path, 1), tmp_path, preexec=_file_size_limit(16 * 1024))
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "cannot write", "File too large")
    assert not path.exists() and temp_files(tmp_path) == []


@contextlib.contextmanager
def _tiny_tmpfs(folder: Path):
    """A 512 KiB tmpfs at `folder` (root with CAP_SYS_ADMIN only; else the test is skipped)."""
    folder.mkdir()
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_disk(base_ckpt, tmp_path):
    """A real ENOSPC: a tiny tmpfs filled up after the checkpoint was put there (the lock file's
    holder note cannot be written either; that must not matter)."""
    with _tiny_tmpfs(tmp_path / "disk") as disk:
        path = disk / "m.pt"
        shutil.copyfile(base_ckpt, path)
        _fill(disk)
        before = path.read_bytes()
        result = run_wsn(train_args(path, 2), tmp_path)
        assert result.returncode == 1, result.stderr
        assert_one_line_error(result.stderr, str(path), "No space left on device", "unchanged")
        assert path.read_bytes() == before
        assert temp_files(disk) == []


@contextlib.contextmanager
def _read_only(folder: Path):
    """Make `folder` refuse new entries for this process: chmod 0o555, or, as root (whom mode bits
    do not stop), the immutable attribute; skipped where neither works."""
    if not ROOT:
        folder.chmod(0o555)
        try:
            yield "Permission denied"
        finally:
            folder.chmod(0o755)
        return
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0
    ):
        pytest.skip("running as root and this file system has no immutable attribute")
    try:
        probe = folder / "probe"
        with pytest.raises(OSError):
            probe.touch()
        yield "Operation not permitted"
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def test_read_only_folder_lock_cannot_be_created(ckpt):
    from wsncli.app import app

    before = ckpt.read_bytes()
    with _read_only(ckpt.parent) as why:
        result = CliRunner().invoke(app, [str(a) for a in train_args(ckpt, 2)])
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, "cannot create lock file", why)
    assert ckpt.read_bytes() == before and temp_files(ckpt.parent) == []


def test_read_only_folder_checkpoint_cannot_be_written(ckpt):
    before = ckpt.read_bytes()
    lock = ckpt.with_name("m.pt.lock")
    lock.touch()
    lock.chmod(0o666)  # the lock can be taken; the new checkpoint cannot be created beside it
    with _read_only(ckpt.parent) as why:
        result = run_wsn(train_args(ckpt, 2), ckpt.parent)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, str(ckpt), "cannot write", why, "unchanged")
    assert ckpt.read_bytes() == before and temp_files(ckpt.parent) == []


def test_missing_folder_is_one_line(tmp_path):
    from wsncli.app import app

    path = tmp_path / "no" / "such" / "m.pt"
    result = CliRunner().invoke(app, [str(a) for a in train_args(path, 1)])
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, f"{path}: cannot write: folder {path.parent} does not exist")
    assert not (tmp_path / "no").exists()


def test_lock_path_taken_by_a_folder_is_one_line(ckpt):
    from wsncli.app import app

    ckpt.with_name("m.pt.lock").mkdir()
    before = ckpt.read_bytes()
    result = CliRunner().invoke(app, [str(a) for a in train_args(ckpt, 2)])
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, "cannot create lock file")
    assert ckpt.read_bytes() == before
