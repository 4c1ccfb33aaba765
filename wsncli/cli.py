"""The `wsn` console script. Ctrl-C during start-up (importing torch, parsing options) exits 130 with
one line; once a command runs, Ctrl-C raises KeyboardInterrupt so it can clean up (handle_errors)."""

from __future__ import annotations

import os
import signal

INTERRUPTED = "interrupted; files are as they were before the command"


def _interrupted_at_startup(_signum, _frame) -> None:
    # Nothing has been written yet: leave at once, without a traceback from inside an import.
    os.write(2, f"wsn: error: {INTERRUPTED}\n".encode())
    os._exit(130)


def command_started() -> None:
    """Called as a command begins: from now on Ctrl-C raises KeyboardInterrupt again."""
    if signal.getsignal(signal.SIGINT) is _interrupted_at_startup:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
        signal.signal(signal.SIGINT, _interrupted_at_startup)
    from wsncli.app import main as run  # heavy: typer, rich, torch

    run()
