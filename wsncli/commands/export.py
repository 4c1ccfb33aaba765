"""`wsn export`: one learned task as a standalone program (.pt2) or weights plus graph (.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsncli.commands.console import ArchModuleOpt, arch_module, handle_errors, not_stdout, print_json, stdout
from wsncli.engine.limits import MAX_TASK_ID


def _is_pt2_export(path: Path) -> bool:
    """A .pt2 archive that wsn export wrote (it holds the extra file wsn.json)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("wsn.json") for name in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


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
    from wsncli.engine.store.checkpoint import load_checkpoint
    from wsncli.engine.store.paths import file_prefix, plan_output, write_output
    from wsncli.engine.usecases.export import SUFFIXES, export_task, output_suffix
    from wsncli.errors import UsageError

    suffix = output_suffix(output)
    if suffix not in SUFFIXES:
        raise UsageError(f"{output}: export writes .pt2 (torch.export program) or .safetensors files")
    own = (
        _is_pt2_export if suffix == ".pt2" else (lambda p: b'"wsn-task-export"' in file_prefix(p, 4096))
    )  # never a checkpoint
    target = plan_output(output, what=f"{suffix} export", inputs=[ckpt], force=force, is_own_kind=own)
    result = export_task(load_checkpoint(ckpt, arch=arch_module(arch_module_name)), task, suffix)
    size = write_output(target, result.data)
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
