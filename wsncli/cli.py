"""The `wsn` console script. Ctrl-C during start-up (importing torch, parsing options) exits 130 with
one line; once a command runs, Ctrl-C raises KeyboardInterrupt so it can clean up (handle_errors)."""

from __future__ import annotations

from wsncli.interrupts import install_startup_handler


def main() -> None:
    install_startup_handler()
    from wsncli.app import main as run  # typer and the command modules (torch loads per command)

    run()
