"""`wsn predict`: a learned task's predictions on new inputs, in the user's own labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from wsncli.commands.console import (
    ArchModuleOpt,
    arch_module,
    handle_errors,
    not_stdout,
    print_json,
    set_threads,
    stdout,
)
from wsncli.engine.limits import DEVICES, MAX_TASK_ID
from wsncli.errors import UsageError


def parse_task(text: str, infer: str, per_batch: int | None) -> int | None:
    """--task: a task id in 1..MAX_TASK_ID, or `auto` (None); --infer-per-batch needs auto."""
    if text.strip().lower() == "auto":
        return None
    try:
        task = int(text)
    except ValueError:
        raise UsageError(f"--task must be a task id or auto, got {text!r}") from None
    if not 1 <= task <= MAX_TASK_ID:
        raise UsageError(f"--task must be in 1..{MAX_TASK_ID} or auto, got {task}")
    if per_batch is not None or infer != "entropy":
        raise UsageError("--infer and --infer-per-batch apply to --task auto only")
    return task


@handle_errors
def predict_command(
    inputs: Annotated[
        Path,
        typer.Argument(help="A .npy or .npz of inputs shaped like the task's data, or an image / a folder of images."),
    ],
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint holding the task.")],
    task: Annotated[
        str,
        typer.Option("--task", "-t", help="The learned task to use, or auto: infer each input's task (see --infer)."),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            callback=not_stdout,
            help="Write the labels (or, with --proba, the probabilities) as .npy (the suffix is added when missing).",
        ),
    ] = None,
    proba: Annotated[bool, typer.Option("--proba", help="Class probabilities (softmax of the head) too.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file that is not a .npy.")] = False,
    device: Annotated[Literal[DEVICES], typer.Option(help="Where to run.")] = "auto",
    arch_module_name: ArchModuleOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the predictions as one JSON object.")] = False,
    infer: Annotated[
        Literal["entropy", "oneshot"],
        typer.Option(help="--task auto: lowest entropy over every task (k forwards), or SupSup's one-shot rule."),
    ] = "entropy",
    infer_per_batch: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="--task auto: one task per N consecutive inputs (assumes each group is from one task; default: "
            "per input).",
        ),
    ] = None,
) -> None:
    """Predict with task TASK of CKPT: the task's own transform, subnetwork and head; labels as learned.
    With --task auto, each input's task is inferred first (inputs as the task's data gives them; pmnist:
    permuted)."""
    from wsncli.commands.schemas import PredictDoc, schema_id
    from wsncli.engine.usecases.predict import PredictRequest, predict_file

    task_id = parse_task(task, infer, infer_per_batch)  # usage errors before any file is opened
    if task_id is None:
        from wsncli.commands.predict_auto import render_auto
        from wsncli.engine.usecases.predict_auto import AutoPredictRequest, predict_auto_file

        auto = AutoPredictRequest(
            ckpt, inputs, infer, infer_per_batch, output, force, proba, device, arch_module(arch_module_name)
        )
        render_auto(
            predict_auto_file(auto, on_threads=set_threads), ckpt, inputs, infer, infer_per_batch, proba, json_out
        )
        return
    request = PredictRequest(ckpt, task_id, inputs, output, force, proba, device, arch_module(arch_module_name))
    done = predict_file(request, on_threads=set_threads)
    result, files, output = done.predictions, done.files, done.output
    if json_out:
        print_json(
            PredictDoc(
                schema=schema_id("predict"),
                checkpoint=str(ckpt),
                task=task_id,
                input=str(inputs),
                n=len(result.labels),
                files=files,
                classes=list(result.classes),
                predictions=result.labels.tolist(),
                probabilities=None if result.probabilities is None else result.probabilities.tolist(),
                output=None if output is None else str(output),
            )
        )
        return
    if output is not None:
        stdout.print(f"wrote {len(result.labels)} {'probability rows' if proba else 'labels'} to {output}")
        return
    for i, label in enumerate(result.labels.tolist()):
        extra = "" if result.probabilities is None else "  " + " ".join(f"{p:.4f}" for p in result.probabilities[i])
        name = "" if files is None else f"{files[i]}  "  # images: which file each label is for
        stdout.print(f"{name}{label}{extra}", markup=False)
