"""Evaluation and the forget-free proof.

Each task is re-measured on its own test set with its own mask, head, BatchNorm and input transform;
nothing is copied from the past except what was recorded at learning, which is compared:
- the subnetwork digest decides: identical parameters give an identical function, so a changed
  digest means the task changed (`changed`, exit 3);
- with the same subnetwork and the same test data, predictions should be identical too; where some
  differ (the last bit of a near-tie on another machine, thread count or device), the task is
  `outputs-differ`: a warning, not forgetting;
- when the test data differs from the data at learning (its digest), the accuracies are not
  comparable: the task is `data-changed`, left out of BWT, and only its subnetwork is proven;
- records that contradict each other (a recorded accuracy its own recorded predictions do not give,
  tensors of a task with no record) are reported as tampered;
- a record whose record digest fails (format 3: its benchmark, classes, transform or recorded digests
  were edited, no parameter changed) is `record-changed`: a damaged record, not forgetting, and never
  forget-free (exit 1).
The checksums and these cross-checks detect accidents and careless edits, not an adversary who can
rewrite the file and its checksums; for that, sign checkpoints ($WSN_CHECKPOINT_KEY, HMAC-SHA256).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.data.registry import resolve_data_root
from wsncli.engine.nn.user import ArchModule
from wsncli.engine.runtime import choose_threads, resolve_device
from wsncli.engine.store.checkpoint import Checkpoint, load_checkpoint
from wsncli.engine.usecases.outputs import outputs_digest, predict, set_task_mode, subnet_digest
from wsncli.engine.usecases.record import recorded_task_data
from wsncli.errors import CheckpointError, TaskError, WsnError

PROVEN, OUTPUTS_DIFFER, DATA_CHANGED, CHANGED = "proven", "outputs-differ", "data-changed", "changed"
RECORD_CHANGED = "record-changed"


@dataclass(frozen=True)
class TaskEval:
    """One task re-measured now, beside what was recorded when it was learned."""

    task: int
    order: int
    accuracy: float
    accuracy_at_learning: float
    n_test: int
    subnet_match: bool  # masked weights, mask, head, BatchNorm (and transform) are bit-identical
    data_match: bool  # the test set is the one used at learning
    outputs_match: bool | None  # predictions identical to those at learning (None: data differs)
    differing_outputs: int | None  # how many test predictions differ (None: unknown or not comparable)
    record_match: bool = True  # the record digest holds (what data and labels the task is measured on)

    @property
    def status(self) -> str:
        if not self.record_match:  # the recorded digests themselves may be what was edited
            return RECORD_CHANGED
        if not self.subnet_match:
            return CHANGED
        if not self.data_match:
            return DATA_CHANGED
        return PROVEN if self.outputs_match else OUTPUTS_DIFFER


@dataclass
class AccuracyMatrix:
    """R[i][j]: accuracy of task `tasks[j]` after learning `tasks[i]` (learning order; None: not measured).
    `now` is the row eval measured (None for tasks not evaluated)."""

    tasks: list[int]
    rows: list[list[float | None]]
    now: list[float | None]


@dataclass
class EvalReport:
    tasks: list[TaskEval] = field(default_factory=list)
    matrix: AccuracyMatrix | None = None
    last_task: int | None = None  # the last task of the learning sequence (left out of BWT)
    capacity_used: float | None = None
    tampered: list[str] = field(default_factory=list)
    signature: str = "unsigned"

    @property
    def acc(self) -> float | None:
        return float(np.mean([t.accuracy for t in self.tasks])) if self.tasks else None

    @property
    def bwt_tasks(self) -> list[TaskEval]:
        """Tasks BWT averages over: learned before the last one, with unchanged test data and record."""
        return [t for t in self.tasks if t.task != self.last_task and t.data_match and t.record_match]

    @property
    def bwt(self) -> float | None:
        """1/(T-1) * sum over i < T of (R[T][i] - R[i][i]) (None when no task qualifies)."""
        tasks = self.bwt_tasks
        return float(np.mean([t.accuracy - t.accuracy_at_learning for t in tasks])) if tasks else None

    @property
    def forget_free(self) -> bool:
        """Every task's record holds and its subnetwork is unchanged."""
        return all(t.subnet_match and t.record_match for t in self.tasks)

    @property
    def outputs_match(self) -> bool:
        return all(t.outputs_match is not False for t in self.tasks)

    def with_status(self, status: str) -> list[int]:
        return [t.task for t in self.tasks if t.status == status]

    @property
    def changed(self) -> list[int]:
        return self.with_status(CHANGED)


def capacity_used(ckpt: Checkpoint) -> float | None:
    """|M_T| / |θ|: the fraction of the masked layers' weights any learned task uses (None: finetune)."""
    if ckpt.meta.method != "wsn":
        return None
    union = ckpt.used_weights()
    total = sum(m.numel() for m in union.values())
    return sum(int(m.sum()) for m in union.values()) / total if total else 0.0


def _record_contradictions(
    ckpt: Checkpoint, task: int, predictions: np.ndarray, y_test: np.ndarray, data_match: bool
) -> list[str]:
    """What a task's record says that its own recorded predictions contradict."""
    record, stored = ckpt.task_record(task), ckpt.predictions.get(task)
    found = []
    if stored is not None:
        if outputs_digest(stored) != record.outputs_digest:
            found.append(f"task {task}: the recorded predictions do not match the recorded outputs digest")
        elif data_match and len(stored) == len(y_test) and float((stored == y_test).mean()) != record.accuracy:
            found.append(
                f"task {task}: the recorded accuracy {record.accuracy:.4f} contradicts its recorded predictions "
                f"({float((stored == y_test).mean()):.4f})"
            )
    elif (
        data_match
        and outputs_digest(predictions) == record.outputs_digest
        and float((predictions == y_test).mean()) != record.accuracy
    ):
        found.append(f"task {task}: the recorded accuracy {record.accuracy:.4f} contradicts its recorded outputs")
    return found


def evaluate_checkpoint(
    ckpt: Checkpoint,
    tasks: list[int] | None,
    data_root,
    device: torch.device,
    on_task: Callable[[int, int, int], None] | None = None,
) -> EvalReport:
    """Re-evaluate `tasks` (default: all learned) on their own test sets; on_task(task, i, total)
    is called before each."""
    learned = ckpt.learned()
    chosen = learned if not tasks else list(dict.fromkeys(tasks))  # each task once, in the order asked
    missing = [t for t in chosen if t not in learned]
    if missing:
        raise TaskError(
            f"task {missing[0]} is not learned in this checkpoint (learned: {', '.join(map(str, learned)) or 'none'})"
        )
    model = ckpt.model.to(device)
    report = EvalReport(
        last_task=learned[-1] if learned else None,
        capacity_used=capacity_used(ckpt),
        tampered=list(ckpt.tampered),
        signature=ckpt.signature,
    )
    for i, task in enumerate(chosen):
        if on_task:
            on_task(task, i, len(chosen))
        record = ckpt.task_record(task)
        try:
            data = recorded_task_data(ckpt, task, data_root)
        except WsnError as exc:
            if task not in ckpt.damaged_records:
                raise
            raise CheckpointError(
                f"task {task}'s record fails its record digest (what data it is measured on, its labels or its "
                f"digests were edited outside wsn), and its data cannot be loaded: {exc}"
            ) from None
        masks = ckpt.masks.get(task)
        if masks is not None:
            masks = {n: m.to(device) for n, m in masks.items()}
        set_task_mode(model, masks)
        predictions = predict(model, data.x_test, task, device)
        data_match = data.digest() == record.data_digest and tuple(data.classes) == tuple(record.classes)
        outputs_match = outputs_digest(predictions) == record.outputs_digest if data_match else None
        stored = ckpt.predictions.get(task)
        differing = None
        if data_match and stored is not None and len(stored) == len(predictions):
            differing = int((stored != predictions).sum())
        report.tampered += _record_contradictions(ckpt, task, predictions, data.y_test, data_match)
        report.tasks.append(
            TaskEval(
                task=task,
                order=record.order,
                accuracy=float((predictions == data.y_test).mean()),
                accuracy_at_learning=record.accuracy,
                n_test=int(data.y_test.shape[0]),
                subnet_match=subnet_digest(model, task, masks, ckpt.preps.get(task), record.digest_version)
                == record.subnet_digest,
                data_match=data_match,
                outputs_match=outputs_match,
                differing_outputs=differing,
                record_match=task not in ckpt.damaged_records,
            )
        )
    report.matrix = _matrix(ckpt, report)
    return report


def _matrix(ckpt: Checkpoint, report: EvalReport) -> AccuracyMatrix:
    order = ckpt.learned()
    rows = []
    for i, record in enumerate(ckpt.tasks):
        row = list(record.accuracy_row[:i]) + [None] * (i - len(record.accuracy_row))
        rows.append(row + [record.accuracy] + [None] * (len(order) - i - 1))
    now = {t.task: t.accuracy for t in report.tasks}
    return AccuracyMatrix(order, rows, [now.get(t) for t in order])


@dataclass(frozen=True)
class EvalRequest:
    """What `wsn eval` was asked: the file, the tasks (None: all learned), where the data is (None: the
    environment's, else the recorded root), the device, and the trunk factory of a custom network."""

    ckpt: Path
    tasks: list[int] | None = None
    data_root: Path | None = None
    device: str = "auto"
    arch: ArchModule | None = None


def evaluate_file(
    req: EvalRequest,
    on_task: Callable[[int, int, int], None] | None = None,
    on_threads: Callable[[int], None] | None = None,
) -> EvalReport:
    """Load, verify and re-evaluate a checkpoint file (`wsn eval`): one call. The thread count chosen
    for the network goes to `on_threads` (the caller sets it)."""
    device = resolve_device(req.device)
    ckpt = load_checkpoint(req.ckpt, arch=req.arch)
    if on_threads is not None:
        on_threads(choose_threads(sum(layer.weight.numel() for layer in ckpt.model.subnet_layers().values()), None))
    return evaluate_checkpoint(ckpt, req.tasks, checkpoint_data_root(ckpt, req.data_root), device, on_task)


def checkpoint_data_root(ckpt: Checkpoint, asked: Path | None) -> Path | None:
    """Where a checkpoint's data is: as asked (or $WSN_DATA_ROOT), else the folder recorded at learning."""
    root = resolve_data_root(asked)
    if root is None and ckpt.meta.data_root:
        root = Path(ckpt.meta.data_root)
    return root
