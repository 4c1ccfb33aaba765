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
    import io

    import numpy as np

    from wsncli.commands.schemas import PredictDoc, schema_id
    from wsncli.engine.runtime import choose_threads, resolve_device
    from wsncli.engine.store.checkpoint import load_checkpoint
    from wsncli.engine.store.paths import file_prefix, plan_output, write_output
    from wsncli.engine.usecases.predict import image_files, is_image_input, predict_task, read_inputs

    target = None
    if output is not None and str(output) != "-" and output.suffix.lower() != ".npy":
        output = output.with_name(output.name + ".npy")  # a .npy file is named so, as numpy.save names it
    if output is not None:
        target = plan_output(
            output,
            what=".npy file",
            inputs=[ckpt, inputs],
            force=force,
            is_own_kind=lambda p: file_prefix(p, 6) == b"\x93NUMPY",
        )
    dev = resolve_device(device)
    checkpoint = load_checkpoint(ckpt, arch=arch_module(arch_module_name))
    set_threads(choose_threads(sum(l.weight.numel() for l in checkpoint.model.subnet_layers().values()), None))
    result = predict_task(checkpoint, task, read_inputs(inputs, checkpoint), dev, proba, str(inputs))
    files = [str(f) for f in image_files(inputs)] if is_image_input(inputs) else None
    if target is not None:
        buffer = io.BytesIO()
        np.save(buffer, result.probabilities if proba else result.labels, allow_pickle=False)
        write_output(target, buffer.getvalue())
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
