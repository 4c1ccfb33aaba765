"""`wsn report`: plots of a checkpoint's history (accuracy matrix, capacity, masks) and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsncli.commands.console import handle_errors, not_stdout, print_json, progress_bar, show_progress, stdout


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
    from wsncli.engine.usecases.report import FILES, report_folder

    with progress_bar(show_progress(quiet)) as progress:
        bar = progress.add_task("drawing", total=len(FILES))
        written = report_folder(ckpt, output, force, lambda name: progress.update(bar, advance=1, description=name))
    if json_out:
        print_json(ReportDoc(schema=schema_id("report"), checkpoint=str(ckpt), output=str(output), files=written))
    else:
        stdout.print(f"wrote {len(written)} files to {output}/: " + ", ".join(Path(w).name for w in written))
