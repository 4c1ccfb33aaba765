"""The `wsn` command line: one Typer app, one module per subcommand, one-line usage errors (exit 2)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from wsncli import __version__
from wsncli.commands.evaluate import eval_command
from wsncli.commands.export import export_command
from wsncli.commands.forget_task import forget_task_command
from wsncli.commands.inspect_file import inspect_command
from wsncli.commands.pack_masks import pack_masks_command
from wsncli.commands.predict import predict_command
from wsncli.commands.report import report_command
from wsncli.commands.train_task import train_task_command
from wsncli.commands.unpack_masks import unpack_masks_command


def _error_line(exc: typer.TyperException) -> str:
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    ctx = getattr(exc, "ctx", None)
    if exc.exit_code != 2:
        return f"wsn: error: {message}"
    return f"wsn: error: {message} (see '{ctx.command_path if ctx is not None else 'wsn'} -h')"


class WsnGroup(TyperGroup):
    """The parser's errors as wsn's: a usage error is one line `wsn: error: ...` and exit 2, checked before
    any command runs; the same in the console script and under typer.testing.CliRunner."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(
                args=args, prog_name=prog_name or "wsn", complete_var=complete_var, standalone_mode=False, **extra
            )
        except typer.TyperException as exc:  # usage errors (exit 2) and the parser's other refusals
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `wsn` (or group): the whole help, on stderr
                typer.echo(exc.format_message(), err=True)
            else:
                typer.echo(_error_line(exc), err=True)
            code = exc.exit_code
        except typer.Abort:
            typer.echo("wsn: error: interrupted", err=True)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="wsn",
    cls=WsnGroup,
    help=(
        "Forget-free continual learning with Winning SubNetworks: one task per command, proven zero forgetting, "
        "compressed masks."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsn {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Forget-free continual learning with Winning SubNetworks."""


app.command("train-task")(train_task_command)
app.command("eval")(eval_command)
app.command("inspect")(inspect_command)
app.command("pack-masks")(pack_masks_command)
app.command("unpack-masks")(unpack_masks_command)
app.command("predict")(predict_command)
app.command("export")(export_command)
app.command("report")(report_command)
app.command("forget-task")(forget_task_command)


def main() -> None:
    app(prog_name="wsn")
