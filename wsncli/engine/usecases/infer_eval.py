"""`wsn eval --infer-task`: how well each learned task's test inputs find their task without its id.

Per task and overall: task-inference accuracy (per sample: the fraction of inputs whose inferred task
is their own), accuracy with the inferred task (class-incremental accuracy: right only when the
inferred task is the true one AND its head predicts the right class), accuracy with the true task
(what `eval` measures) and the confusion between tasks (row: true task, column: inferred task, in
learning order). With `per_batch=N` the same is measured again with one task per N consecutive test
inputs of one task (SupSup's protocol, which leaks the task through the batching), separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.nn.user import ArchModule
from wsncli.engine.runtime import choose_threads, resolve_device
from wsncli.engine.store.checkpoint import Checkpoint, load_checkpoint
from wsncli.engine.usecases.evaluate import checkpoint_data_root
from wsncli.engine.usecases.infer import InferRequest, check_request, infer_tasks, inference_inputs
from wsncli.engine.usecases.outputs import predict, set_task_mode
from wsncli.engine.usecases.record import recorded_task_data


@dataclass(frozen=True)
class InferenceScores:
    """One protocol's figures for one task (or all): fractions of its test inputs."""

    task_accuracy: float  # inferred task == true task
    accuracy_inferred_task: float  # inferred task right and its head's class right
    confusion: list[int]  # inputs inferred as each candidate task (learning order)


@dataclass(frozen=True)
class TaskInferenceEval:
    task: int
    n_test: int
    accuracy_true_task: float
    per_sample: InferenceScores
    per_batch: InferenceScores | None  # with per_batch=N only


@dataclass
class InferenceReport:
    method: str
    per_batch: int | None
    task_ids: list[int]  # the candidates, learning order (confusion columns)
    tasks: list[TaskInferenceEval] = field(default_factory=list)

    def overall(self, batch: bool = False) -> InferenceScores | None:
        """Pooled over every evaluated task's test inputs (weighted by their counts)."""
        rows = [(t.n_test, t.per_batch if batch else t.per_sample) for t in self.tasks]
        if not rows or any(s is None for _, s in rows):
            return None
        n = sum(count for count, _ in rows)
        return InferenceScores(
            task_accuracy=sum(c * s.task_accuracy for c, s in rows) / n,
            accuracy_inferred_task=sum(c * s.accuracy_inferred_task for c, s in rows) / n,
            confusion=[sum(s.confusion[j] for _, s in rows) for j in range(len(self.task_ids))],
        )

    @property
    def accuracy_true_task(self) -> float | None:
        n = sum(t.n_test for t in self.tasks)
        return sum(t.n_test * t.accuracy_true_task for t in self.tasks) / n if n else None


def _scores(result, task: int, y: np.ndarray, candidates: list[int]) -> InferenceScores:
    right_task = result.tasks == task  # (N,)
    return InferenceScores(
        task_accuracy=float(right_task.mean()),
        accuracy_inferred_task=float((right_task & (result.indices == y)).mean()),
        confusion=[int((result.tasks == c).sum()) for c in candidates],
    )


def evaluate_inference(
    ckpt: Checkpoint,
    tasks: list[int] | None,
    data_root: Path | None,
    device: torch.device,
    req: InferRequest,
    on_task: Callable[[int, int, int], None] | None = None,
) -> InferenceReport:
    """Infer the task of every test input of `tasks` (default: all learned) among every learned task."""
    candidates = check_request(ckpt, replace(req, per_batch=None))
    chosen = list(dict.fromkeys(tasks)) if tasks else ckpt.learned()
    check_request(ckpt, replace(req, per_batch=None, candidates=tuple(chosen)))  # each is learned
    report = InferenceReport(req.method, req.per_batch, candidates)
    for i, task in enumerate(chosen):
        if on_task:
            on_task(task, i, len(chosen))
        data = recorded_task_data(ckpt, task, data_root)
        x, y = inference_inputs(data), data.y_test
        sample = infer_tasks(ckpt, x, replace(req, per_batch=None, candidates=tuple(candidates)), device)
        batch = None
        if req.per_batch is not None:
            grouped = infer_tasks(ckpt, x, replace(req, candidates=tuple(candidates)), device)
            batch = _scores(grouped, task, y, candidates)
        masks = ckpt.masks.get(task)
        set_task_mode(ckpt.model, None if masks is None else {n: m.to(device) for n, m in masks.items()})
        true_accuracy = float((predict(ckpt.model, data.x_test, task, device) == y).mean())
        report.tasks.append(TaskInferenceEval(task, len(y), true_accuracy, _scores(sample, task, y, candidates), batch))
    return report


@dataclass(frozen=True)
class InferEvalRequest:
    """What `wsn eval --infer-task` was asked: as EvalRequest, plus the rule and the batch protocol."""

    ckpt: Path
    tasks: list[int] | None = None
    data_root: Path | None = None
    device: str = "auto"
    arch: ArchModule | None = None
    method: str = "entropy"
    per_batch: int | None = None


def evaluate_inference_file(
    req: InferEvalRequest,
    on_task: Callable[[int, int, int], None] | None = None,
    on_threads: Callable[[int], None] | None = None,
) -> InferenceReport:
    """Load a checkpoint file and measure task inference on its tasks' test sets: one call."""
    device = resolve_device(req.device)
    ckpt = load_checkpoint(req.ckpt, arch=req.arch)
    if on_threads is not None:
        on_threads(choose_threads(sum(layer.weight.numel() for layer in ckpt.model.subnet_layers().values()), None))
    root = checkpoint_data_root(ckpt, req.data_root)
    return evaluate_inference(ckpt, req.tasks, root, device, InferRequest(req.method, req.per_batch), on_task)
