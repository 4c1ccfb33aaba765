"""What the engine tells whoever runs it about the files it completes and the clean-ups a sudden exit
must still do, and how it asks for signal handling: a `Journal` the caller installs for the duration
of a call. Library use gets the default, which records nothing; the command layer installs its own
(wsncli.interrupts) around each command. A context variable, not a process-wide registry: nothing
outlives the call that installed it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

IGNORE = "ignore"  # what a signal hook returns when the process is already leaving for another reason


class Journal:
    """The engine's side of the bookkeeping; every method does nothing here (library use)."""

    def written(self, path) -> None:
        """`path` is written and complete: an interrupt after this point must not claim otherwise."""

    def removed(self, path) -> None:
        """`path`, written earlier in this call, is gone again (a snapshot at task end)."""

    def on_abrupt_exit(self, key: int, cleanup: Callable[[], None] | None) -> None:
        """Register (or, with None, drop) a clean-up that must run even if a signal ends the process at once."""

    def on_signal(self, hook: Callable[[int], BaseException | str | None] | None) -> None:
        """`hook(signum)` decides what SIGINT/SIGTERM do while the call runs (an exception to raise, IGNORE, None)."""

    def start_watchdog(self, describe: Callable[[int], tuple[str, int] | None]) -> None:
        """End the process within a grace period of a signal even while the main thread is blocked in C code."""


_SILENT = Journal()  # holds no state: every method does nothing
_CURRENT: ContextVar[Journal | None] = ContextVar("wsn_journal", default=None)


def journal() -> Journal:
    """The journal installed for the running call (the silent default in library use)."""
    return _CURRENT.get() or _SILENT


@contextmanager
def installed(j: Journal) -> Iterator[Journal]:
    """Make `j` the journal for everything run inside the block."""
    token = _CURRENT.set(j)
    try:
        yield j
    finally:
        _CURRENT.reset(token)
