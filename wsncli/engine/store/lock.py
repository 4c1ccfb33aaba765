"""One writer per checkpoint: an exclusive flock on `<real checkpoint path>.lock`.

The lock is taken on the resolved path (so a symlink and its target share one lock), opened without
following symlinks, refused when it is not a plain single-named file, and truncated only after it
is held (it is then known to be ours). It is removed when released, so no `.lock` file stays behind;
a process that locked a file just unlinked by its holder notices (the name no longer points at it)
and tries again. flock is released by the kernel when a holder dies, so a killed writer never blocks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from wsncli.engine.journal import journal
from wsncli.engine.store.paths import resolve
from wsncli.errors import LockError

_ATTEMPTS = 40  # x 25 ms: how long a blocked process waits for the holder's note (or its exit)


def lock_path(ckpt: Path) -> Path:
    real = resolve(ckpt, LockError)
    return real.with_name(real.name + ".lock")


class CheckpointLock:
    """Context manager: `with CheckpointLock(path): ...`; a second holder fails fast with LockError."""

    def __init__(self, ckpt: Path) -> None:
        self.ckpt = Path(ckpt)
        self.path = lock_path(self.ckpt)
        self._fd: int | None = None

    def __enter__(self) -> CheckpointLock:
        for _ in range(_ATTEMPTS):
            fd = self._open()
            if self._acquire(fd):
                if self._still_named(fd):
                    self._fd = fd
                    self._write_note(fd)
                    journal().on_abrupt_exit(id(self), self._unlink)
                    return self
                os.close(fd)  # its holder removed it as we locked it: lock the new one
                continue
        raise LockError(f"{self.ckpt} is in use by another wsn process; wait for it to finish")

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # the lock's name is a symlink
                raise LockError(f"{self.path}: is a symlink; refusing to use it as a lock (remove it)") from None
            raise LockError(f"{self.path}: cannot create lock file: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            why = "has other hard links" if stat.S_ISREG(st.st_mode) else "is not a regular file"
            raise LockError(f"{self.path}: {why}; refusing to use it as a lock (remove it)")
        return fd

    def _acquire(self, fd: int) -> bool:
        for attempt in range(_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                # The holder writes its note just after locking and clears it just before
                # unlocking: with no note yet, look again for a moment (it may also be leaving).
                holder = _describe_holder(fd)
                if holder is not None or attempt + 1 == _ATTEMPTS:
                    os.close(fd)
                    raise LockError(
                        f"{self.ckpt} is in use by {holder or 'another wsn process'}; wait for it to finish"
                    ) from None
                time.sleep(0.025)
                if not self._still_named(fd):
                    os.close(fd)
                    return False
            except OSError as exc:  # e.g. ENOLCK on a file system without locks
                os.close(fd)
                raise LockError(f"{self.path}: cannot lock: {exc.strerror or exc}") from None
        return False

    def _still_named(self, fd: int) -> bool:
        try:
            named = os.lstat(self.path)
        except OSError:
            return False
        held = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    @staticmethod
    def _write_note(fd: int) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv[:6]),
        }
        try:  # the holder's description is a courtesy: a full disk must not fail the command here
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass

    def _unlink(self) -> None:
        if self._fd is not None and self._still_named(self._fd):
            os.unlink(self.path)  # while still held: a waiter then sees the name is gone

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        journal().on_abrupt_exit(id(self), None)
        try:
            self._unlink()
        except OSError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass  # closing the descriptor releases the lock anyway
        os.close(self._fd)
        self._fd = None


def _describe_holder(fd: int) -> str | None:
    """The holder's note, or None while there is none."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return None
