"""The `wsn` command line: one Typer app, one module per subcommand."""

from __future__ import annotations

from typing import Annotated

import typer

from wsncli import __version__
from wsncli.commands.evaluate import eval_command
from wsncli.commands.inspect_file import inspect_command
from wsncli.commands.pack_masks import pack_masks_command, unpack_masks_command
from wsncli.commands.train_task import train_task_command

app = typer.Typer(
    name="wsn",
    help="Forget-free continual learning with Winning SubNetworks: one task per command, proven zero forgetting, compressed masks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsn {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Forget-free continual learning with Winning SubNetworks."""


app.command("train-task")(train_task_command)
app.command("eval")(eval_command)
app.command("inspect")(inspect_command)
app.command("pack-masks")(pack_masks_command)
app.command("unpack-masks")(unpack_masks_command)


def main() -> None:
    app(prog_name="wsn")
