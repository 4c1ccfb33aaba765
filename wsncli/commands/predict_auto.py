"""`wsn predict --task auto`: render engine.usecases.predict_auto's result as `predict` renders its own."""

from __future__ import annotations

from pathlib import Path


def render_auto(result, ckpt: Path, inputs: Path, method: str, per_batch: int | None, proba: bool, json_out: bool):
    from wsncli.commands.console import print_json, stdout
    from wsncli.commands.schemas import PredictDoc, schema_id

    inference, labels, files, output = result.inference, result.labels, result.files, result.output
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
                probabilities=None
                if inference.probabilities is None
                else [p.tolist() for p in inference.probabilities],
                output=None if output is None else str(output),
                inferred_tasks=inference.tasks.tolist(),
                infer=method,
                infer_per_batch=per_batch,
                task_classes={str(t): c for t, c in result.task_classes.items()},
            )
        )
        return
    if output is not None:
        stdout.print(f"wrote {len(labels)} {'probability rows' if proba else 'labels'} to {output}")
        return
    for i, (label, task) in enumerate(zip(labels, inference.tasks.tolist())):
        extra = (
            "" if inference.probabilities is None else "  " + " ".join(f"{p:.4f}" for p in inference.probabilities[i])
        )
        name = "" if files is None else f"{files[i]}  "
        stdout.print(f"{name}task {task}  {label}{extra}", markup=False)
