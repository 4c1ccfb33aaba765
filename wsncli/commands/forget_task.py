"""`wsn forget-task`: remove a learned task; release the weights only it used (engine.usecases.forget)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsncli.commands.console import ArchModuleOpt, arch_module, handle_errors, pct, print_json, stdout
from wsncli.engine.limits import MAX_TASK_ID


@handle_errors
def forget_task_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint holding the task (rewritten in place).")],
    task: Annotated[int, typer.Option("--task", "-t", min=1, max=MAX_TASK_ID, help="The learned task to remove.")],
    arch_module_name: ArchModuleOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Remove task TASK from CKPT: its mask, head, statistics, transform, records; release the weights
    it trained that no other task uses. Every other task stays bit-identical (docs/FORGET.md)."""
    from wsncli.commands.schemas import ForgetTaskDoc, schema_id
    from wsncli.engine.usecases.forget import ForgetRequest, forget_task

    result = forget_task(ForgetRequest(ckpt, task, arch_module(arch_module_name)))
    if json_out:
        print_json(
            ForgetTaskDoc(
                schema=schema_id("forget-task"),
                checkpoint=str(ckpt),
                task=task,
                trained=result.trained,
                released=result.released,
                still_used=result.still_used,
                still_used_by={str(t): n for t, n in result.still_used_by.items()},
                released_per_layer=result.released_per_layer,
                capacity_before=result.capacity_before,
                capacity_after=result.capacity_after,
                task_ids=result.learned,
                checkpoint_bytes=result.checkpoint_bytes,
            )
        )
        return
    users = ", ".join(f"task {t}: {n}" for t, n in result.still_used_by.items())
    stdout.print(
        f"forgot task {task} of {ckpt}: it trained {result.trained} weights; {result.released} released (free again), "
        f"{result.still_used} still used by later tasks{f' ({users})' if users else ''} and kept frozen; capacity "
        f"used {pct(result.capacity_before)} -> {pct(result.capacity_after)}; remaining tasks: "
        f"{', '.join(map(str, result.learned)) or 'none'} (each subnetwork digest re-checked: unchanged)",
        markup=False,
    )
