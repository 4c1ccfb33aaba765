"""Evaluation and the forget-free proof: accuracy, output digests, subnetwork digests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from wsncli.engine.nn.models import WSNNet
from wsncli.errors import TaskError


def set_task_mode(model: WSNNet, masks: dict[str, torch.Tensor] | None) -> None:
    """Inference mode for one task: its stored mask (cached masked weights) or dense (baseline)."""
    if masks is None:
        model.dense()
    else:
        model.use_masks(masks)
    model.eval()


@torch.no_grad()
def predict(model: WSNNet, x: np.ndarray, task: int, device: torch.device, batch: int = 2048) -> np.ndarray:
    """Predicted head labels (N,) int64 for inputs x (N, *input_shape); model must be in task mode."""
    out = []
    for i in range(0, x.shape[0], batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).to(device)
        out.append(model(xb, task).argmax(1).cpu())  # (b,)
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, np.int64)


def outputs_digest(predictions: np.ndarray) -> str:
    """sha256 of the predicted labels as little-endian int64."""
    return hashlib.sha256(predictions.astype("<i8").tobytes()).hexdigest()


def subnet_digest(model: WSNNet, task: int, masks: dict[str, torch.Tensor] | None) -> str:
    """sha256 over everything task's outputs depend on: the masked weights (values under the mask,
    in flat order), the mask bits, the task's head and BatchNorm statistics. Device-independent."""
    h = hashlib.sha256()
    for name, layer in model.subnet_layers().items():
        w = layer.weight.detach().cpu()
        if masks is None:
            h.update(w.contiguous().numpy().tobytes())
        else:
            m = masks[name].cpu()
            h.update(np.packbits(m.numpy().reshape(-1)).tobytes())
            h.update(w[m].contiguous().numpy().tobytes())
    for key, value in sorted(model.heads[str(task)].state_dict().items()):
        h.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    if str(task) in model.task_norms:
        for key, value in sorted(model.task_norms[str(task)].state_dict().items()):
            h.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -- the whole checkpoint ----------------------------------------------------------------------
@dataclass(frozen=True)
class TaskEval:
    """One task re-measured now, beside what was recorded when it was learned."""

    task: int
    accuracy: float
    accuracy_at_learning: float
    n_test: int
    outputs_match: bool  # predictions on the test set are identical to those at learning
    subnet_match: bool  # masked weights, mask, head and BatchNorm are bit-identical
    data_match: bool  # the test set is the one used at learning

    @property
    def unchanged(self) -> bool:
        return self.subnet_match and (self.outputs_match or not self.data_match)


@dataclass
class EvalReport:
    tasks: list[TaskEval] = field(default_factory=list)
    capacity_used: float = 0.0
    tampered: list[str] = field(default_factory=list)

    @property
    def acc(self) -> float:
        return float(np.mean([t.accuracy for t in self.tasks])) if self.tasks else float("nan")

    @property
    def bwt(self) -> float:
        return float(np.mean([t.accuracy - t.accuracy_at_learning for t in self.tasks])) if self.tasks else float("nan")

    @property
    def forget_free(self) -> bool:
        return all(t.unchanged for t in self.tasks)

    @property
    def changed(self) -> list[int]:
        return [t.task for t in self.tasks if not t.unchanged]


def capacity_used(ckpt) -> float:
    """|M_T| / |θ|: the fraction of the masked layers' weights that any learned task uses."""
    if ckpt.meta["method"] != "wsn":
        return 1.0 if ckpt.learned() else 0.0
    union = ckpt.used_weights()
    total = sum(m.numel() for m in union.values())
    return sum(int(m.sum()) for m in union.values()) / total if total else 0.0


def evaluate_checkpoint(
    ckpt,
    tasks: list[int] | None,
    data_root,
    device: torch.device,
    on_task: Callable[[int, int, int], None] | None = None,
) -> EvalReport:
    """Re-evaluate `tasks` (default: all learned) on their own test sets with their own mask and head.

    on_task(task, index, total) is called before each task. Nothing is copied from the past except
    the accuracy and digests recorded at learning, which are compared, never reported as "now".
    """
    from wsncli.engine.data.registry import load_task  # local: keeps this module importable without data

    learned = ckpt.learned()
    chosen = learned if not tasks else list(dict.fromkeys(tasks))  # each task once, in the order asked
    missing = [t for t in chosen if t not in learned]
    if missing:
        raise TaskError(f"task {missing[0]} is not learned in this checkpoint (learned: {', '.join(map(str, learned)) or 'none'})")
    model = ckpt.model.to(device)
    report = EvalReport(capacity_used=capacity_used(ckpt), tampered=list(ckpt.tampered))
    for i, task in enumerate(chosen):
        if on_task:
            on_task(task, i, len(chosen))
        record = ckpt.task_record(task)
        data = load_task(ckpt.meta["benchmark"], task, data_root, ckpt.meta.get("n_tasks"))
        masks = ckpt.masks.get(task)
        if masks is not None:
            masks = {n: m.to(device) for n, m in masks.items()}
        set_task_mode(model, masks)
        predictions = predict(model, data.x_test, task, device)
        report.tasks.append(
            TaskEval(
                task=task,
                accuracy=float((predictions == data.y_test).mean()),
                accuracy_at_learning=float(record["accuracy"]),
                n_test=int(data.y_test.shape[0]),
                outputs_match=outputs_digest(predictions) == record["outputs_digest"],
                subnet_match=subnet_digest(model, task, masks) == record["subnet_digest"],
                data_match=data.digest() == record["data_digest"],
            )
        )
    return report
