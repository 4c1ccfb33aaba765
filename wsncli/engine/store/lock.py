"""An exclusive per-checkpoint lock (`<ckpt>.lock`), held with flock so a killed holder never blocks."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from wsncli.errors import LockError

_ATTEMPTS = 40  # x 25 ms: how long a blocked process waits for the holder's note (or its exit)


class CheckpointLock:
    """Context manager: `with CheckpointLock(path): ...`; a second holder fails fast with LockError."""

    def __init__(self, ckpt: Path) -> None:
        self.ckpt = Path(ckpt)
        self.path = self.ckpt.with_name(self.ckpt.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> CheckpointLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LockError(f"{self.path}: cannot create lock file: {exc.strerror or exc}") from None
        for attempt in range(_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # The holder writes its note just after locking and clears it just before
                # unlocking: with no note yet, look again for a moment (it may also be leaving).
                holder = _describe_holder(fd)
                if holder is not None or attempt + 1 == _ATTEMPTS:
                    os.close(fd)
                    raise LockError(f"{self.ckpt} is in use by {holder or 'another wsn process'}; wait for it to finish") from None
                time.sleep(0.025)
            except OSError as exc:  # e.g. ENOLCK on a file system without locks
                os.close(fd)
                raise LockError(f"{self.path}: cannot lock: {exc.strerror or exc}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv[:6])}
        try:  # the holder's description is a courtesy: a full disk must not fail the command here
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
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
