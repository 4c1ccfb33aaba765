"""`wsn predict --task auto`: each input's task inferred (engine.usecases.infer), then predicted with it."""

from __future__ import annotations

from pathlib import Path


def predict_auto(
    checkpoint, ckpt: Path, inputs: Path, infer: str, per_batch, proba: bool, target, output, json_out, dev
):
    """Infer, predict, and write/print the result as `predict` does, with each input's task."""
    import io

    import numpy as np

    from wsncli.commands.console import print_json, stdout
    from wsncli.commands.schemas import PredictDoc, schema_id
    from wsncli.engine.store.paths import write_output
    from wsncli.engine.usecases.infer import InferRequest, infer_tasks
    from wsncli.engine.usecases.predict import image_files, is_image_input, read_inputs

    x = read_inputs(inputs, checkpoint)
    shape = tuple(checkpoint.meta.model.input_shape)
    if tuple(x.shape) == shape:  # one sample: a batch of one
        x = x[None]
    result = infer_tasks(checkpoint, x, InferRequest(infer, per_batch, probabilities=proba), dev)
    labels = result.labels(checkpoint)
    files = [str(f) for f in image_files(inputs)] if is_image_input(inputs) else None
    if target is not None:
        buffer = io.BytesIO()
        if proba:  # rows differ in length across tasks: one row per input, padded with NaN past its task's classes
            width = max((len(p) for p in result.probabilities), default=0)
            rows = np.full((len(labels), width), np.nan, np.float32)
            for i, p in enumerate(result.probabilities):
                rows[i, : len(p)] = p
            np.save(buffer, rows, allow_pickle=False)
        else:
            np.save(buffer, np.asarray(labels), allow_pickle=False)
        write_output(target, buffer.getvalue())
    if json_out:
        print_json(
            PredictDoc(
                schema=schema_id("predict"),
                checkpoint=str(ckpt),
                task="auto",
                input=str(inputs),
                n=len(labels),
                files=files,
                classes=[],
                predictions=list(labels),
                probabilities=None if result.probabilities is None else [p.tolist() for p in result.probabilities],
                output=None if output is None else str(output),
                inferred_tasks=result.tasks.tolist(),
                infer=infer,
                infer_per_batch=per_batch,
                task_classes={str(t): list(checkpoint.task_record(t).classes) for t in result.candidates},
            )
        )
        return
    if output is not None:
        stdout.print(f"wrote {len(labels)} {'probability rows' if proba else 'labels'} to {output}")
        return
    for i, (label, task) in enumerate(zip(labels, result.tasks.tolist())):
        extra = "" if result.probabilities is None else "  " + " ".join(f"{p:.4f}" for p in result.probabilities[i])
        name = "" if files is None else f"{files[i]}  "
        stdout.print(f"{name}task {task}  {label}{extra}", markup=False)
