"""Ctrl-C and SIGTERM: one line and exit 130 / 143 during start-up; once a command runs, both raise
(KeyboardInterrupt, Terminated) so that the command cleans up (lock released, no temporary file),
except while a module is being imported (a command loads the engine before it touches any file;
an exception raised inside torch's import aborts the process), where they leave at once too."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

from wsncli.engine import journal as journal_

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


IGNORE = journal_.IGNORE  # what a signal hook returns when the process is already leaving for another reason
_SIGNAL_HOOK: list[Callable[[int], BaseException | str | None]] = []


def on_signal(hook: Callable[[int], BaseException | str | None] | None) -> None:
    """While a command runs, `hook(signum)` decides what SIGINT/SIGTERM do: return an exception to raise
    instead (a data-parallel run raises the failure its processes agreed on, engine.parallel.failure),
    IGNORE to let the process go on leaving as it is, or None for the usual KeyboardInterrupt/Terminated."""
    _SIGNAL_HOOK[:] = [] if hook is None else [hook]


def _raise_interrupted(signum, frame) -> None:
    # An exception raised inside a C extension's import (torch's) aborts the process with a C++
    # trace; commands import the engine before touching any file, so leave at once there.
    if _importing(frame):
        _at_startup(signum, frame)
    outcome = _SIGNAL_HOOK[0](signum) if _SIGNAL_HOOK else None
    if outcome == IGNORE:
        return
    if isinstance(outcome, BaseException):
        raise outcome
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


WATCHDOG_GRACE = 3.0  # seconds a signalled process may take to leave by itself
_FINISHED = threading.Event()  # set once the command has reported how it ended
_WATCHDOG: list[threading.Thread] = []


def start_watchdog(describe: Callable[[int], tuple[str, int] | None], grace: float = WATCHDOG_GRACE) -> None:
    """End the process within `grace` seconds of SIGINT/SIGTERM even while its main thread is blocked in
    C code (a collective waiting for a hung peer), where Python's handler cannot run: a thread woken by
    the signal waits `grace`, then runs the abrupt-exit clean-ups, prints one line (`describe(signum)`:
    (message, exit code), or None for the usual interrupted/terminated line) unless the command already
    reported, and leaves. Call from the main thread; once per process."""
    if _WATCHDOG:
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    thread = threading.Thread(target=_watch, args=(read_end, describe, grace), name="wsn-watchdog", daemon=True)
    _WATCHDOG.append(thread)
    thread.start()


def _watch(read_end: int, describe: Callable[[int], tuple[str, int] | None], grace: float) -> None:
    while True:
        received = [n for n in os.read(read_end, 64) if n in (signal.SIGINT, signal.SIGTERM)]
        if not received:
            continue
        time.sleep(grace)  # the process is still here: its main thread did not leave
        terminated = signal.SIGTERM in received
        try:
            agreed = describe(received[-1])
        except Exception:  # noqa: BLE001 - the line must still be printed
            agreed = None
        message, code = agreed or (interrupted_message(terminated), 143 if terminated else 130)
        for cleanup in list(_CLEANUPS.values()):
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if not _FINISHED.is_set():
            os.write(2, f"wsn: error: {message}\n".encode())
        os._exit(code)


def install_startup_handler() -> None:
    """Until a command starts, Ctrl-C and SIGTERM leave at once (not when ignored, e.g. `nohup`)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _at_startup)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _at_startup)


def command_finished() -> None:
    """Called once a command's work is done: a signal while the interpreter shuts down is ignored
    (leaving takes well under a second), so it can neither print a traceback nor turn success into 130."""
    _FINISHED.set()
    _WRITTEN.clear()  # what it wrote has been reported: nothing outlives the command
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) in (_raise_interrupted, _at_startup):
            signal.signal(signum, signal.SIG_IGN)


def command_started() -> None:
    """Called as a command begins: Ctrl-C raises KeyboardInterrupt again, SIGTERM raises Terminated."""
    _HINTS.clear()
    _WRITTEN.clear()  # a second command in one process names only its own files
    if signal.getsignal(signal.SIGINT) is _at_startup:
        signal.signal(signal.SIGINT, _raise_interrupted)
    if signal.getsignal(signal.SIGTERM) is _at_startup:
        signal.signal(signal.SIGTERM, _raise_interrupted)


class CommandJournal(journal_.Journal):
    """The command layer's journal (engine.journal): the engine's reports go to this module's bookkeeping."""

    def written(self, path) -> None:
        record_written(path)

    def removed(self, path) -> None:
        record_removed(path)

    def on_abrupt_exit(self, key: int, cleanup: Callable[[], None] | None) -> None:
        on_abrupt_exit(key, cleanup)

    def on_signal(self, hook) -> None:
        on_signal(hook)

    def start_watchdog(self, describe) -> None:
        start_watchdog(describe)
