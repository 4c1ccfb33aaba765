"""Paths the user names are theirs: wsn writes where a path points without replacing what is not its
own to replace, never overwrites an input, and leaves nothing behind when it refuses.

A character device or FIFO is streamed into (never renamed over); a symlink is written through (the
link stays, the lock is on the target); a hard-linked file is refused; mode and owner survive a
rewrite; a file of another kind needs --force; the lock file is never followed. wsn 0.1.1 replaced
devices, FIFOs and symlinks with regular files and left `<ckpt>.lock` behind. Runs as root here, so
the tests make private character devices (mknod) and chown files to check the owner is kept.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.reliability.conftest import (
    TIMEOUT,
    assert_one_line_error,
    child_env,
    learned,
    run_wsn,
    train_args,
    wait_for_lock_holder,
    wsn_command,
)
from wsncli.engine.store.lock import CheckpointLock

ROOT = os.geteuid() == 0


def _invoke(*args):
    from wsncli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _rdev(path) -> tuple[int, int]:
    st = os.stat(path)
    assert stat.S_ISCHR(st.st_mode), f"{path} is no longer a character device"
    return os.major(st.st_rdev), os.minor(st.st_rdev)


@pytest.fixture(autouse=True)
def _dev_null_untouched():
    """Whatever a test does, /dev/null is still the null device after it."""
    yield
    assert _rdev("/dev/null") == (1, 3)


@pytest.fixture
def devices(tmp_path):
    """(null, full): private character devices with /dev/null's and /dev/full's numbers (root), else
    the real ones (which a non-root process cannot replace)."""
    if not ROOT:
        return Path("/dev/null"), Path("/dev/full")
    made = []
    for name, minor in (("null", 3), ("full", 7)):
        path = tmp_path / f"dev-{name}"
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        made.append(path)
    return tuple(made)


@pytest.fixture
def packed(ckpt) -> Path:
    """The masks of `ckpt` (m.pt, task 1) as m.wsnm beside it."""
    out = ckpt.with_name("m.wsnm")
    result = _invoke("pack-masks", "-c", ckpt, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    return out


# ---- character devices and FIFOs are streamed into --------------------------------------------------
def test_pack_masks_streams_into_a_character_device(ckpt, packed, devices):
    null, full = devices
    expected = packed.read_bytes()
    before = _rdev(null)
    result = run_wsn(["pack-masks", "-c", ckpt, "-o", null], ckpt.parent)  # the installed wsn, a real process
    assert result.returncode == 0, result.stderr
    assert f"{len(expected)} bytes" in result.stdout
    assert _rdev(null) == before
    result = _invoke("pack-masks", "-c", ckpt, "-o", full)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, f"{full}: cannot write: No space left on device")
    assert _rdev(full) == (1, 7)
    result = _invoke("unpack-masks", packed, "-o", null)
    assert result.exit_code == 0, result.output
    assert _rdev(null) == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == sorted(
        ["m.pt", "m.wsnm", *(d.name for d in devices if d.parent == ckpt.parent)]
    )


def test_output_to_a_fifo_is_streamed_not_replaced(ckpt, packed, tmp_path):
    fifo = tmp_path / "pipe.wsnm"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read():
        with open(fifo, "rb") as fh:  # blocks until wsn opens the other end
            received.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = _invoke("pack-masks", "-c", ckpt, "-o", fifo)
    reader.join(60)
    assert result.exit_code == 0, result.output
    assert received == [packed.read_bytes()]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_inspect_of_a_fifo_returns_at_once(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    result = run_wsn(["inspect", fifo], tmp_path, timeout=120)  # a hang is a TimeoutExpired
    assert result.returncode == 1
    assert_one_line_error(result.stderr, f"{fifo}: is a FIFO, not a checkpoint or packed-mask file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_folder_block_device_or_socket_is_never_written_into(ckpt, packed, tmp_path):
    import socket

    folder = tmp_path / "masks.wsnm"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    targets = [(folder, "a folder")]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock = tmp_path / "s.wsnm"
    server.bind(str(sock))
    targets.append((sock, "a socket"))
    if ROOT:  # a private block-device node (a made-up number: nothing behind it is touched)
        block = tmp_path / "blk.wsnm"
        os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 250))
        targets.append((block, "a block device"))
    try:
        for target, kind in targets:
            before = os.lstat(target)
            for args in (("pack-masks", "-c", ckpt, "-o", target), ("pack-masks", "-c", ckpt, "-o", target, "--force")):
                result = _invoke(*args)
                assert result.exit_code == 1, result.output
                assert_one_line_error(result.stderr, f"{target} is {kind}, not a file: refusing to write")
            after = os.lstat(target)
            assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)
        assert _listing(folder) == ["keep.txt"] and (folder / "keep.txt").read_text() == "mine"
    finally:
        server.close()


def test_inspect_reads_within_the_checkpoint_size_limit(ckpt, monkeypatch):
    size = ckpt.stat().st_size
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", str(size - 1))
    result = _invoke("inspect", ckpt)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, f"{size} bytes is over the {size - 1}-byte limit")
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", str(size))
    assert _invoke("inspect", ckpt).exit_code == 0


def test_train_task_refuses_a_device_or_fifo_as_its_checkpoint(tmp_path, devices):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (devices[0], "a character device")):
        result = _invoke(*train_args(path, 1))
        assert result.exit_code == 1, result.output
        assert_one_line_error(result.stderr, f"{path} is {kind}; a checkpoint must be a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ---- symlinks are written through; hard links refused -------------------------------------------------
@pytest.fixture
def linked(ckpt, tmp_path):
    """(link, real): tmp/model.pt -> real/model.pt (a relative link), real/model.pt holding task 1."""
    real = tmp_path / "real" / "model.pt"
    real.parent.mkdir()
    shutil.move(ckpt, real)
    link = tmp_path / "model.pt"
    link.symlink_to(Path("real") / "model.pt")
    return link, real


def test_train_task_writes_through_a_symlinked_checkpoint(linked):
    link, real = linked
    result = _invoke(*train_args(link, 2))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "model.pt")
    assert learned(real) == [1, 2]
    result = _invoke("pack-masks", "-c", link, "-o", link.with_name("m.wsnm"))
    assert result.exit_code == 0, result.output
    assert _listing(link.parent) == ["m.wsnm", "model.pt", "real"] and _listing(real.parent) == ["model.pt"]


@pytest.mark.parametrize("held", ["real", "link"])
def test_the_lock_is_taken_on_the_resolved_path(linked, held):
    """Holding the lock through one name makes train-task through the other fail fast."""
    link, real = linked
    before = real.read_bytes()
    hold, use = (real, link) if held == "real" else (link, real)
    with CheckpointLock(hold):
        start = time.monotonic()
        result = _invoke(*train_args(use, 2))
        assert time.monotonic() - start < 20
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, f"{use} is in use by pid {os.getpid()}")
    assert real.read_bytes() == before and link.is_symlink()


def test_a_hard_linked_target_is_refused(ckpt, packed):
    other = ckpt.with_name("other-name.pt")
    os.link(ckpt, other)
    before = ckpt.read_bytes()
    result = _invoke(*train_args(ckpt, 2))
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, f"{ckpt} has 2 hard links: replacing it would split them into different files")
    wsnm_link = ckpt.with_name("second.wsnm")
    os.link(packed, wsnm_link)
    masks = packed.read_bytes()
    result = _invoke("pack-masks", "-c", ckpt, "-o", wsnm_link)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, f"{wsnm_link} has 2 hard links")
    assert ckpt.read_bytes() == other.read_bytes() == before and os.stat(ckpt).st_nlink == 2
    assert packed.read_bytes() == wsnm_link.read_bytes() == masks
    assert _listing(ckpt.parent) == ["m.pt", "m.wsnm", "other-name.pt", "second.wsnm"]


# ---- mode and owner survive ---------------------------------------------------------------------------
def test_mode_and_owner_survive_a_rewrite(ckpt, packed):
    ckpt.chmod(0o600)
    packed.chmod(0o640)
    owner = (os.getuid(), os.getgid())
    if ROOT:  # as root the owner can be kept: give both files to somebody else first
        owner = (4321, 8765)
        os.chown(ckpt, *owner)
        os.chown(packed, *owner)
    result = _invoke(*train_args(ckpt, 2))
    assert result.exit_code == 0, result.output
    result = _invoke("pack-masks", "-c", ckpt, "-o", packed)
    assert result.exit_code == 0, result.output
    for path, mode in ((ckpt, 0o600), (packed, 0o640)):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == mode and (st.st_uid, st.st_gid) == owner, (path, oct(st.st_mode), st.st_uid)
    assert learned(ckpt) == [1, 2]


# ---- inputs are never outputs; other kinds of file need --force ------------------------------------------
def test_an_output_that_is_an_input_is_refused(linked, tmp_path):
    link, real = linked
    before = real.read_bytes()
    packed = tmp_path / "m.wsnm"
    assert _invoke("pack-masks", "-c", real, "-o", packed).exit_code == 0
    cases = [
        (("pack-masks", "--ckpt", real, "-o", real), f"{real} is the input file {real}"),
        (("pack-masks", "--ckpt", link, "-o", real), f"{real} is the input file {link}"),
        (("pack-masks", "--ckpt", real, "-o", link), f"{link} is the input file {real}"),
        (("unpack-masks", packed, "--ckpt", real, "-o", real), f"{real} is the input file {real}"),
        (("unpack-masks", packed, "--ckpt", link, "-o", real), f"{real} is the input file {link}"),
        (("unpack-masks", packed, "-o", packed), f"{packed} is the input file {packed}"),
    ]
    masks = packed.read_bytes()
    for args, needle in cases:
        result = _invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert_one_line_error(result.stderr, needle, "refusing to overwrite it")
    assert real.read_bytes() == before and packed.read_bytes() == masks and link.is_symlink()


def test_overwriting_another_kind_of_file_needs_force(ckpt, packed, tmp_path):
    notes = tmp_path / "notes.txt"
    for command, output, what in (
        ("pack-masks", "out.wsnm", "packed-mask file"),
        ("unpack-masks", "out.npz", "masks .npz"),
    ):
        args = ["pack-masks", "-c", ckpt] if command == "pack-masks" else ["unpack-masks", packed]
        notes.write_text("my notes\n")
        result = _invoke(*args, "-o", notes)
        assert result.exit_code == 1, result.output
        assert_one_line_error(result.stderr, f"{notes} exists and is not a {what}; pass --force to overwrite it")
        assert notes.read_text() == "my notes\n"
        assert _invoke(*args, "-o", notes, "--force").exit_code == 0
        assert notes.read_text(errors="replace") != "my notes\n"
        target = tmp_path / output  # a file of the command's own kind is replaced without --force
        assert _invoke(*args, "-o", target).exit_code == 0
        first = target.read_bytes()
        result = _invoke(*args, "-o", target)
        assert result.exit_code == 0, result.output
        assert target.read_bytes() == first
    assert set(np.load(tmp_path / "out.npz")) == {"task1/layers.0", "task1/layers.1"}


# ---- the lock file is never followed -----------------------------------------------------------------
def test_a_lock_that_is_a_symlink_or_a_hard_link_is_refused(ckpt, tmp_path):
    lock = ckpt.with_name("m.pt.lock")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    before = ckpt.read_bytes()
    nowhere = tmp_path / "nowhere.txt"
    for make, why in (
        (lambda: lock.symlink_to(precious), "is a symlink"),
        (lambda: lock.symlink_to(nowhere), "is a symlink"),
        (lambda: os.link(precious, lock), "has other hard links"),
    ):
        make()
        result = _invoke(*train_args(ckpt, 2))
        assert result.exit_code == 1, result.output
        assert_one_line_error(result.stderr, f"{lock}: {why}; refusing to use it as a lock (remove it)")
        assert precious.read_text() == "keep me\n" and not nowhere.exists() and ckpt.read_bytes() == before
        lock.unlink()
    assert _listing(tmp_path) == ["m.pt", "precious.txt"]


# ---- refusals leave nothing behind ----------------------------------------------------------------------
def test_refused_commands_leave_no_lock_or_temporary(ckpt, packed, tmp_path, devices):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "notes.txt").write_text("notes\n")
    other = tmp_path / "hard.pt"
    os.link(packed, other)
    before = _listing(tmp_path)
    refusals = [
        (train_args(ckpt, 1), 1),  # already learned
        (train_args(ckpt, 2, 1, "--benchmark", "pmnist"), 2),  # other benchmark: a usage error
        (train_args(ckpt, 6), 1),  # no such task
        (train_args(ckpt, 2, 1, "--lr", "0"), 2),
        (train_args(fifo, 1), 1),
        (train_args(tmp_path / "new.pt", 1, 1, "--hidden", "30000-30000"), 2),
        (["pack-masks", "-c", ckpt, "-o", ckpt], 1),
        (["pack-masks", "-c", ckpt, "-o", tmp_path / "notes.txt"], 1),
        (["pack-masks", "-c", ckpt, "-o", other], 1),
        (["pack-masks", "-c", ckpt, "-o", devices[1]], 1),
        (["pack-masks", "-c", fifo, "-o", tmp_path / "x.wsnm"], 1),
        (["unpack-masks", packed, "--ckpt", ckpt, "-o", ckpt], 1),
        (["unpack-masks", tmp_path / "notes.txt"], 1),
        (["inspect", fifo], 1),
        (["eval", "--ckpt", ckpt, "--task", "3"], 1),
    ]
    for args, code in refusals:
        result = _invoke(*args)
        assert result.exit_code == code, (args, result.output)
        assert_one_line_error(result.stderr)
        assert _listing(tmp_path) == before, args


# ---- a link and its target, written at the same time ------------------------------------------------
def _paused_holder(ckpt: Path, task: int, ready: Path, go: Path) -> subprocess.Popen:
    """`wsn train-task` that, once it holds the lock and has loaded everything, waits for `go`."""
    code = (
        "import os, sys, time\n"
        "import wsncli.engine.usecases.learn as L\n"
        "real = L.train_task\n"
        "def paused(*a, **k):\n"
        f"    open({str(ready)!r}, 'w').close()\n"
        f"    while not os.path.exists({str(go)!r}):\n        time.sleep(0.01)\n"
        "    return real(*a, **k)\n"
        "L.train_task = paused\n"
        "from wsncli.cli import main\n"
        f"sys.argv = ['wsn'] + {[str(a) for a in train_args(ckpt, task)]!r}\n"
        "main()\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ckpt.parent,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("winner", ["link", "real"])
def test_writers_through_a_link_and_its_target_cannot_diverge(linked, tmp_path, winner):
    """Two train-task processes, one through the link, one through the real path: the second fails
    fast naming the first; the first saves; one file holds the winner's tasks, the link still points
    to it."""
    link, real = linked
    first, second = (link, real) if winner == "link" else (real, link)
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder = _paused_holder(first, 2, ready, go)
    try:
        wait_for_lock_holder(real.with_name("model.pt.lock"), holder)
        deadline = time.monotonic() + TIMEOUT
        while not ready.exists() and time.monotonic() < deadline and holder.poll() is None:
            time.sleep(0.01)
        loser = subprocess.run(
            wsn_command() + [str(a) for a in train_args(second, 3)],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert loser.returncode == 1, loser.stderr
        assert_one_line_error(loser.stderr, f"{second} is in use by pid {holder.pid}")
    finally:
        go.touch()
        out, err = holder.communicate(timeout=TIMEOUT)
    assert holder.returncode == 0, err
    assert "learned task 2 (2 of 2" in out
    assert link.is_symlink() and link.resolve() == real.resolve() and real.is_file() and not real.is_symlink()
    assert learned(link) == learned(real) == [1, 2]
    assert _listing(real.parent) == ["model.pt"] and _listing(tmp_path) == ["go", "model.pt", "ready", "real"]
