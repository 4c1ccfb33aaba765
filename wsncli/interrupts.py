"""Ctrl-C and SIGTERM: one line and exit 130 / 143 during start-up; once a command runs, both raise
(KeyboardInterrupt, Terminated) so that the command cleans up (lock released, no temporary file),
except while a module is being imported (a command loads the engine before it touches any file;
an exception raised inside torch's import aborts the process), where they leave at once too."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

INTERRUPTED = "interrupted; files are as they were before the command"
TERMINATED = "terminated (SIGTERM); files are as they were before the command"


_WRITTEN: dict[str, None] = {}  # outputs this command has completed (atomically replaced or streamed), in order


def record_written(path) -> None:
    """Note that `path` is written and complete: an interrupt after this point must not claim otherwise."""
    _WRITTEN[str(path)] = None


def record_removed(path) -> None:
    """Note that `path`, written earlier by this command, is gone again (a snapshot at task end)."""
    _WRITTEN.pop(str(path), None)


def written() -> list[str]:
    """The outputs this command has completed so far."""
    return list(_WRITTEN)


_HINTS: list[Callable[[], str | None]] = []  # how to go on after an interrupt (asked when it comes)


def add_interrupt_hint(hint: Callable[[], str | None]) -> None:
    """Register a hint the interrupt message ends with (None from it: nothing to add)."""
    _HINTS.append(hint)


def interrupted_message(terminated: bool) -> str:
    """What an interrupt left: nothing, or the outputs completed before it; and how to go on."""
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    if not _WRITTEN:
        message = f"{what}; files are as they were before the command"
    else:
        message = f"{what} after writing {', '.join(_WRITTEN)} (complete); nothing else was changed"
    hints = [h for h in (hint() for hint in _HINTS) if h]
    return "; ".join([message, *hints])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every clean-up path runs; exit code 143."""


_CLEANUPS: dict[int, Callable[[], None]] = {}  # what leaving at once must still undo (a lock file, a temporary)


def on_abrupt_exit(key: int, cleanup: Callable[[], None] | None) -> None:
    """Register (or, with None, drop) a clean-up that must run even when a signal ends the process at once."""
    if cleanup is None:
        _CLEANUPS.pop(key, None)
    else:
        _CLEANUPS[key] = cleanup


def _at_startup(signum, _frame) -> None:
    # Leave at once, without a traceback from inside an import; undo what is registered first.
    message, code = (TERMINATED, 143) if signum == signal.SIGTERM else (INTERRUPTED, 130)
    for cleanup in list(_CLEANUPS.values()):
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    os.write(2, f"wsn: error: {message}\n".encode())
    os._exit(code)


def _importing(frame) -> bool:
    """Whether the signal came while a module was being imported (importlib's frames on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise_interrupted(signum, frame) -> None:
    # An exception raised inside a C extension's import (torch's) aborts the process with a C++
    # trace; commands import the engine before touching any file, so leave at once there.
    if _importing(frame):
        _at_startup(signum, frame)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def install_startup_handler() -> None:
    """Until a command starts, Ctrl-C and SIGTERM leave at once (not when ignored, e.g. `nohup`)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _at_startup)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _at_startup)


def command_finished() -> None:
    """Called once a command's work is done: a signal while the interpreter shuts down is ignored
    (leaving takes well under a second), so it can neither print a traceback nor turn success into 130."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) in (_raise_interrupted, _at_startup):
            signal.signal(signum, signal.SIG_IGN)


def command_started() -> None:
    """Called as a command begins: Ctrl-C raises KeyboardInterrupt again, SIGTERM raises Terminated."""
    _HINTS.clear()
    if signal.getsignal(signal.SIGINT) is _at_startup:
        signal.signal(signal.SIGINT, _raise_interrupted)
    if signal.getsignal(signal.SIGTERM) is _at_startup:
        signal.signal(signal.SIGTERM, _raise_interrupted)
