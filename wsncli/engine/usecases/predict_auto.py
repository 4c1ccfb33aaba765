"""`wsn predict --task auto` in one call: plan the output, load the checkpoint, read the inputs, infer
each input's task and predict with it (usecases.infer), write the .npy."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsncli.engine.nn.user import ArchModule
from wsncli.engine.store.paths import write_output
from wsncli.engine.usecases.infer import InferRequest, TaskInference, infer_tasks
from wsncli.engine.usecases.predict import image_files, is_image_input, prepare_prediction, read_inputs


@dataclass(frozen=True)
class AutoPredictRequest:
    """As PredictRequest, without a task: the rule (entropy | oneshot) and the batch protocol instead."""

    ckpt: Path
    inputs: Path
    method: str = "entropy"
    per_batch: int | None = None
    output: Path | None = None
    force: bool = False
    probabilities: bool = False
    device: str = "auto"
    arch: ArchModule | None = None


@dataclass(frozen=True)
class AutoPredictResult:
    inference: TaskInference
    labels: list  # each input's label, in its inferred task's classes
    task_classes: dict[int, list]  # each candidate's classes
    files: list[str] | None  # image inputs: the file of each prediction, in order
    output: Path | None


def probability_rows(inference: TaskInference) -> np.ndarray:
    """(N, widest head) float32: each input's softmax over its inferred task's classes, NaN past them."""
    probs = inference.probabilities or []
    rows = np.full((len(probs), max((len(p) for p in probs), default=0)), np.nan, np.float32)
    for i, p in enumerate(probs):
        rows[i, : len(p)] = p
    return rows


def predict_auto_file(req: AutoPredictRequest, on_threads: Callable[[int], None] | None = None) -> AutoPredictResult:
    setup = prepare_prediction(req.ckpt, req.inputs, req.output, req.force, req.device, req.arch, on_threads)
    output, target, device, ckpt = setup.output, setup.target, setup.device, setup.ckpt
    x = read_inputs(req.inputs, ckpt)
    if tuple(x.shape) == tuple(ckpt.meta.model.input_shape):  # one sample: a batch of one
        x = x[None]
    inference = infer_tasks(ckpt, x, InferRequest(req.method, req.per_batch, probabilities=req.probabilities), device)
    labels = inference.labels(ckpt)
    if target is not None:
        buffer = io.BytesIO()
        np.save(buffer, probability_rows(inference) if req.probabilities else np.asarray(labels), allow_pickle=False)
        write_output(target, buffer.getvalue())
    files = [str(f) for f in image_files(req.inputs)] if is_image_input(req.inputs) else None
    classes = {t: list(ckpt.task_record(t).classes) for t in inference.candidates}
    return AutoPredictResult(inference, labels, classes, files, output)
