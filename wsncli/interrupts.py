"""Ctrl-C and SIGTERM: one line and exit 130 (143) during start-up; a clean-up path once a command runs."""

from __future__ import annotations

import os
import signal

INTERRUPTED = "interrupted; files are as they were before the command"


def _interrupted_at_startup(_signum, _frame) -> None:
    # Nothing has been written yet: leave at once, without a traceback from inside an import.
    os.write(2, f"wsn: error: {INTERRUPTED}\n".encode())
    os._exit(130)


def install_startup_handler() -> None:
    """Until a command starts, Ctrl-C leaves at once (not when SIGINT is ignored, e.g. `nohup`)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_at_startup)


def command_started() -> None:
    """Called as a command begins: from now on Ctrl-C raises KeyboardInterrupt again."""
    if signal.getsignal(signal.SIGINT) is _interrupted_at_startup:
        signal.signal(signal.SIGINT, signal.default_int_handler)
