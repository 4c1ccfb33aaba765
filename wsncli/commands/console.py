"""What every command shares: stderr console, one-line errors with exit codes, JSON, progress bars."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from wsncli.engine.journal import installed
from wsncli.errors import FieldError, Interrupted, OutputError, WsnError
from wsncli.interrupts import (
    CommandJournal,
    Terminated,
    command_finished,
    command_started,
    interrupted_message,
    written,
)

BROKEN_PIPE = 141  # as a shell reports a process ended by SIGPIPE: the reader (`| head`) has gone


class _StandardOutput:
    """sys.stdout as Rich and print_json write to it: a full device or a closed descriptor becomes
    an OutputError (one line, exit 1), a reader that went away a BrokenPipeError (exit 141)."""

    def _stream(self):
        if sys.stdout is None:
            raise OutputError("standard output is closed")
        return sys.stdout

    def _guard(self, action):
        try:
            return action(self._stream())
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None

    def write(self, text: str) -> int:
        return self._guard(lambda out: out.write(text))

    def write_bytes(self, data: bytes) -> None:
        self._guard(lambda out: (out.buffer.write(data), out.buffer.flush()))

    def flush(self) -> None:
        self._guard(lambda out: out.flush())

    def isatty(self) -> bool:
        return sys.stdout is not None and sys.stdout.isatty()

    def fileno(self) -> int:
        return self._stream().fileno()

    @property
    def encoding(self) -> str:
        return getattr(sys.stdout, "encoding", None) or "utf-8"


class _Console(Console):
    def on_broken_pipe(self) -> None:  # Rich's own exits 1; handle_errors makes it 141
        raise BrokenPipeError


standard_output = _StandardOutput()
# Piped output is not wrapped at 80 columns: tables keep their rows on one line for grep and less.
stdout = _Console(
    file=standard_output, highlight=False, soft_wrap=True, width=None if standard_output.isatty() else 200
)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def positive_up_to(most: float) -> Callable:
    """Typer callback of a float option in (0, most]: NaN and infinities are named as such, not as
    out of range (Typer's own min/max cannot say "above 0", nor tell NaN from a number too large)."""

    def check(value):
        if value is not None and not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number, got {value}")
        if value is not None and not 0 < value <= most:
            raise typer.BadParameter(f"must be in (0, {most:g}], got {value:g}")
        return value

    return check


def not_stdout(value):
    """Typer callback of an -o that names a file or folder: `-` (stdout, as pack-masks offers) is a usage error."""
    if value is not None and str(value) == "-":
        raise typer.BadParameter("'-' (standard output) is offered by pack-masks only; name a path")
    return value


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
            with installed(CommandJournal()):  # the engine reports written files and clean-ups here
                return fn(*args, **kwargs)
        except OutputError as exc:
            raise fail(_after_writing(str(exc)), exc.exit_code) from None
        except FieldError as exc:  # the engine names the field; the user typed the option
            raise fail(exc.as_option(), exc.exit_code) from None
        except WsnError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(BROKEN_PIPE) from None
        except Terminated:
            raise fail(interrupted_message(terminated=True), 143) from None
        except KeyboardInterrupt:
            raise fail(interrupted_message(terminated=False), Interrupted.exit_code) from None
        finally:
            command_finished()

    return wrapper


def _after_writing(message: str) -> str:
    """An output failure after the command's files were written says so (they are complete)."""
    done = written()
    return f"{message}; {', '.join(done)} written and complete" if done else message


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again on the broken pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def print_json(document) -> None:
    """One JSON document (a msgspec Struct from commands.schemas) on stdout and nothing else."""
    import msgspec

    standard_output.write(msgspec.json.encode(document).decode() + "\n")
    standard_output.flush()


def show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class LiveColumn(ProgressColumn):
    """Text computed when the bar is drawn (a running loss read at each refresh, never per step)."""

    def __init__(self, text: Callable[[], str]) -> None:
        super().__init__()
        self.text = text

    def render(self, task) -> Text:
        return Text(self.text())


@contextmanager
def progress_bar(enabled: bool, live: Callable[[], str] | None = None) -> Iterator[Progress]:
    """A Rich progress bar on stderr; a no-op display when disabled (not a TTY, or --quiet).
    `live` adds a column whose text is computed at each refresh."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([LiveColumn(live)] if live is not None else []),
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


ArchModuleOpt = Annotated[
    Optional[str],
    typer.Option(
        "--arch-module",
        metavar="PKG.MODULE:FACTORY",
        help="Your own trunk: FACTORY(input_shape) returns an nn.Module (B, *input) -> (B, features); wsn masks "
        "it and adds heads. Needed again by every command that builds the network (docs/API.md).",
    ),
]


def arch_module(name: str | None):
    """The --arch-module's factory, imported now (None without the option); import errors are one line."""
    if name is None:
        return None
    from wsncli.engine.nn.user import load_arch_module

    return load_arch_module(name)


def set_threads(count: int) -> None:
    """The command sets torch's CPU thread count (the engine only chooses it: engine.runtime.choose_threads)."""
    import torch

    torch.set_num_threads(count)
