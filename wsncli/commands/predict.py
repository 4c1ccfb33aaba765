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


@handle_errors
def predict_command(
    inputs: Annotated[
        Path,
        typer.Argument(help="A .npy or .npz of inputs shaped like the task's data, or an image / a folder of images."),
    ],
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint holding the task.")],
    task: Annotated[int, typer.Option("--task", "-t", min=1, max=MAX_TASK_ID, help="The learned task to use.")],
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
) -> None:
    """Predict with task TASK of CKPT: the task's own transform, subnetwork and head; labels as learned."""
    from wsncli.commands.schemas import PredictDoc, schema_id
    from wsncli.engine.usecases.predict import PredictRequest, predict_file

    request = PredictRequest(ckpt, task, inputs, output, force, proba, device, arch_module(arch_module_name))
    done = predict_file(request, on_threads=set_threads)
    result, files, output = done.predictions, done.files, done.output
    if json_out:
        print_json(
            PredictDoc(
                schema=schema_id("predict"),
                checkpoint=str(ckpt),
                task=task,
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
