"""Ctrl-C and SIGTERM: one line and exit 130 / 143 during start-up; once a command runs, both raise
(KeyboardInterrupt, Terminated) so that the command cleans up (lock released, no temporary file)."""

from __future__ import annotations

import os
import signal

INTERRUPTED = "interrupted; files are as they were before the command"
TERMINATED = "terminated (SIGTERM); files are as they were before the command"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every clean-up path runs; exit code 143."""


def _at_startup(signum, _frame) -> None:
    # Nothing has been written yet: leave at once, without a traceback from inside an import.
    message, code = (TERMINATED, 143) if signum == signal.SIGTERM else (INTERRUPTED, 130)
    os.write(2, f"wsn: error: {message}\n".encode())
    os._exit(code)


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated


def install_startup_handler() -> None:
    """Until a command starts, Ctrl-C and SIGTERM leave at once (not when ignored, e.g. `nohup`)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _at_startup)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _at_startup)


def command_started() -> None:
    """Called as a command begins: Ctrl-C raises KeyboardInterrupt again, SIGTERM raises Terminated."""
    if signal.getsignal(signal.SIGINT) is _at_startup:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is _at_startup:
        signal.signal(signal.SIGTERM, _raise_terminated)
