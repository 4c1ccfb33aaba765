"""What every command shares: stderr console, one-line errors with exit codes, JSON, progress bars."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from wsncli.errors import Interrupted, WsnError
from wsncli.interrupts import INTERRUPTED, TERMINATED, Terminated, command_started

# Piped output is not wrapped at 80 columns: tables keep their rows on one line for grep and less.
stdout = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def fail(message: str, code: int) -> typer.Exit:
    """Print `wsn: error: message` as one line on stderr; return the Exit to raise."""
    stderr.print(Text("wsn: error: ", style="bold red") + Text(one_line(message)))
    return typer.Exit(code)


def warn(message: str) -> None:
    """`wsn: warning: message` as one line on stderr."""
    stderr.print(Text("wsn: warning: ", style="bold yellow") + Text(one_line(message)))


def handle_errors(fn: Callable) -> Callable:
    """Turn WsnError into a one-line message and its exit code; Ctrl-C into 130, SIGTERM into 143."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            command_started()
            return fn(*args, **kwargs)
        except WsnError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except Terminated:
            raise fail(TERMINATED, 143) from None
        except KeyboardInterrupt:
            raise fail(INTERRUPTED, Interrupted.exit_code) from None

    return wrapper


def print_json(document) -> None:
    """One JSON document (a msgspec Struct from commands.schemas) on stdout and nothing else."""
    import msgspec

    sys.stdout.write(msgspec.json.encode(document).decode() + "\n")
    sys.stdout.flush()


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress]:
    """A Rich progress bar on stderr; a no-op display when disabled (not a TTY, or --quiet)."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=not enabled,
        transient=True,
    )
    with progress:
        yield progress


def pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.2f}%"
