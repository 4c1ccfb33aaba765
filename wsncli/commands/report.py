"""`wsn report`: plots of a checkpoint's history (accuracy matrix, capacity, masks) and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsncli.commands.console import handle_errors, not_stdout, print_json, progress_bar, show_progress, stdout
from wsncli.errors import WsnError

_MAGIC = {".png": b"\x89PNG", ".csv": b"after_task", ".md": b"# wsn report"}


@handle_errors
def report_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint to report on.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", callback=not_stdout, help="Folder for report.md, the PNG plots and accuracy_matrix.csv."
        ),
    ],
    force: Annotated[bool, typer.Option(help="Overwrite files in the folder that wsn report did not write.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the files written as one JSON object.")] = False,
) -> None:
    """Write plots and a report.md for CKPT into the folder OUTPUT (needs: pip install 'wsn[plot]')."""
    from wsncli.commands.schemas import ReportDoc, schema_id
    from wsncli.engine.store.paths import file_prefix, plan_output, write_output
    from wsncli.engine.store.reader import read_checkpoint_file
    from wsncli.engine.usecases.inspect import describe_checkpoint
    from wsncli.engine.usecases.report import FILES, PlotError, build_report

    if output.exists() and not output.is_dir():
        raise PlotError(f"{output} exists and is not a folder")
    parent = output.absolute().parent
    if not output.exists() and not parent.is_dir():  # like every file wsn writes: no folders made above it
        raise PlotError(f"{output}: cannot write: folder {parent} does not exist")
    found = read_checkpoint_file(ckpt)
    targets = {
        name: plan_output(
            output / name,
            what=f"wsn report {Path(name).suffix} file",
            inputs=[ckpt],
            force=force,
            is_own_kind=lambda p, s=Path(name).suffix: file_prefix(p, 16).startswith(_MAGIC[s]),
        )
        for name in FILES
        if (output / name).exists()
    }
    with progress_bar(show_progress(quiet)) as progress:
        bar = progress.add_task("drawing", total=len(FILES))
        files = build_report(
            describe_checkpoint(found, ckpt), lambda name: progress.update(bar, advance=1, description=name)
        )
    made = not output.exists()
    output.mkdir(exist_ok=True)  # the report's own folder (its parent exists)
    try:
        for f in files:
            write_output(targets.get(f.name) or plan_output(output / f.name, what="report file", inputs=[ckpt]), f.data)
    except WsnError:
        if made:
            _remove_if_empty(output)  # a full disk leaves no empty folder behind
        raise
    written = [str(output / f.name) for f in files]
    if json_out:
        print_json(ReportDoc(schema=schema_id("report"), checkpoint=str(ckpt), output=str(output), files=written))
    else:
        stdout.print(f"wrote {len(files)} files to {output}/: " + ", ".join(f.name for f in files))


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only if empty: a file something else put there stays
    except OSError:
        pass
