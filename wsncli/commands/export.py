"""`wsn export`: one learned task as a standalone program (.pt2) or weights plus graph (.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsncli.commands.console import ArchModuleOpt, arch_module, handle_errors, not_stdout, print_json, stdout
from wsncli.engine.limits import MAX_TASK_ID


@handle_errors
def export_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint holding the task.")],
    task: Annotated[int, typer.Option("--task", "-t", min=1, max=MAX_TASK_ID, help="The learned task to export.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            callback=not_stdout,
            help="task.pt2 (torch.export program) or task.safetensors (weights + JSON graph).",
        ),
    ],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file of another kind.")] = False,
    arch_module_name: ArchModuleOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as one JSON object.")] = False,
) -> None:
    """Export task TASK of CKPT: loadable with plain torch, no wsn needed (docs/EXPORT.md)."""
    from wsncli.commands.schemas import ExportDoc, schema_id
    from wsncli.engine.usecases.export import ExportRequest, export_file

    result = export_file(ExportRequest(ckpt, task, output, force, arch_module(arch_module_name)))
    size = result.bytes
    if json_out:
        print_json(
            ExportDoc(
                schema=schema_id("export"),
                checkpoint=str(ckpt),
                task=task,
                output=str(output),
                format=result.format,
                bytes=size,
            )
        )
    else:
        stdout.print(f"wrote task {task} of {ckpt} to {output} ({result.format}, {size / 1024:.1f} KiB)")
