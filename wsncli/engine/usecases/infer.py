"""Inputs without a task id: infer each input's task from the stored subnetworks, then predict with it.

What an input is (docs/INFERENCE.md): a sample as its task's data produces it, before the task's own
transform's affine part. For pmnist that is the permuted image (the permutation is what makes the
tasks differ: an unpermuted image would fit every task), so each candidate applies its transform
without its permutation; for every other benchmark the raw input, and each candidate its full
transform. `inference_inputs(data)` makes such inputs from a task's data.

Per-sample inference is the default and the only thing called task-inference accuracy. With
`per_batch=N`, consecutive groups of N inputs share one inferred task (the scores summed over the
group): SupSup's evaluation, which assumes the group comes from one task (it leaks the task through
the batching); reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from wsncli.engine.data.device import device_transform
from wsncli.engine.data.preprocess import Preprocess
from wsncli.engine.data.registry import TaskData
from wsncli.engine.limits import CUSTOM_ARCH
from wsncli.engine.nn.base import set_task_mode
from wsncli.engine.nn.superpose import Superposed, entropy_scores
from wsncli.engine.store.checkpoint import Checkpoint, task_input_shape
from wsncli.engine.usecases.predict import fit_shape, task_transform
from wsncli.errors import DataError, UsageError

METHODS = ("entropy", "oneshot")
DEFAULT_BATCH = 512


@dataclass(frozen=True)
class InferRequest:
    """How to infer: `method` entropy | oneshot; `per_batch` None (per sample) or N inputs per task;
    `candidates` the tasks to choose from (default: every learned task); `batch` inputs per forward."""

    method: str = "entropy"
    per_batch: int | None = None
    candidates: tuple[int, ...] | None = None
    batch: int = DEFAULT_BATCH
    probabilities: bool = False


@dataclass(frozen=True)
class TaskInference:
    """Per input: the inferred task, the predicted class under it, and every candidate's score."""

    candidates: list[int]
    tasks: np.ndarray  # (N,) inferred task id
    indices: np.ndarray  # (N,) head label under the inferred task
    scores: np.ndarray  # (N, k) lower wins (normalised entropy, or ∂H/∂α_i; per-batch oneshot: the group's mean)
    probabilities: list[np.ndarray] | None  # (n_t,) softmax under the inferred task, per input, when asked
    method: str
    per_batch: int | None

    def labels(self, ckpt: Checkpoint) -> list:
        """The user's label of each prediction, in its inferred task's classes."""
        classes = {t: list(ckpt.task_record(t).classes) for t in self.candidates}
        return [classes[int(t)][int(i)] for t, i in zip(self.tasks, self.indices)]


def candidate_prep(prep: Preprocess) -> Preprocess:
    """A candidate's transform of an inference input: its own, without a permutation (the input is
    already in its task's input space)."""
    return replace(prep, permutation=None) if prep.permutation is not None else prep


def inference_inputs(data: TaskData) -> np.ndarray:
    """A task's test samples as inference inputs: raw, with the task's permutation applied (pmnist)."""
    raw, perm = data.raw_test, data.prep.permutation
    if perm is None:
        return raw
    return raw.reshape(len(raw), -1)[:, perm].reshape(raw.shape)


def check_request(ckpt: Checkpoint, req: InferRequest) -> list[int]:
    """The candidates, after refusing what cannot be inferred (UsageError, one line)."""
    if req.method not in METHODS:
        raise UsageError(f"--infer must be one of {', '.join(METHODS)}, got {req.method!r}")
    if req.per_batch is not None and req.per_batch < 1:
        raise UsageError(f"--infer-per-batch must be at least 1, got {req.per_batch}")
    learned = ckpt.learned()
    candidates = list(dict.fromkeys(req.candidates)) if req.candidates else learned
    missing = [t for t in candidates if t not in learned]
    if missing:
        raise UsageError(
            f"task {missing[0]} is not learned in this checkpoint (learned: {', '.join(map(str, learned)) or 'none'})"
        )
    if not candidates:
        raise UsageError("task inference needs at least one learned task; this checkpoint has none")
    if req.method == "oneshot" and ckpt.meta.method != "wsn":
        raise UsageError(
            "--infer oneshot superposes the tasks' masks; this fine-tune checkpoint has none (use entropy)"
        )
    if req.method == "oneshot" and ckpt.meta.model.arch == CUSTOM_ARCH:
        raise UsageError(
            "--infer oneshot is not available for a network from --arch-module (its per-task BatchNorm and biases "
            "live in your layers, which cannot be superposed); use --infer entropy"
        )
    for t in candidates:
        ckpt.require_intact_record(t)
        task_transform(ckpt, t)  # version-1 records: the benchmark's transform exists
    return candidates


def infer_tasks(ckpt: Checkpoint, x: np.ndarray, req: InferRequest, device: torch.device) -> TaskInference:
    """Infer the task of every input x (N, *sample) among the candidates, then predict with it."""
    candidates = check_request(ckpt, req)
    if x.dtype.kind not in "fiub":
        raise DataError(f"inputs have dtype {x.dtype}; they must be numbers")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError("inputs contain NaN or infinite values")
    shape = tuple(x.shape[1:])
    if all(task_input_shape(ckpt, t) != shape for t in candidates):  # 28x28 images for a 784-input MLP
        x = fit_shape(x, task_input_shape(ckpt, candidates[0]), "inputs")
        shape = tuple(x.shape[1:])
    fitting = [t for t in candidates if task_input_shape(ckpt, t) == shape]
    if not fitting:
        raise DataError(
            f"inputs have shape {shape} per sample; no candidate task takes it "
            f"({', '.join(f'task {t}: {task_input_shape(ckpt, t)}' for t in candidates)})"
        )
    candidates = fitting
    model = ckpt.model.to(device)
    masks = {t: _on(ckpt.masks.get(t), device) for t in candidates}
    transforms = {t: device_transform(candidate_prep(task_transform(ckpt, t)), device) for t in candidates}
    n, k = len(x), len(candidates)
    scores = torch.zeros(n, k)
    chosen_logits: dict[int, torch.Tensor] = {}  # entropy: every candidate's logits, per batch start
    superposed = Superposed(model, candidates, masks) if req.method == "oneshot" else None
    if superposed is not None and req.per_batch is not None:  # SupSup's batch form: one gradient per group
        for start in range(0, n, req.per_batch):
            group = slice(start, min(n, start + req.per_batch))
            total = torch.zeros(k)
            for sub in range(group.start, group.stop, req.batch):
                xb = torch.from_numpy(np.array(x[sub : min(group.stop, sub + req.batch)], copy=True)).to(device)
                total += superposed.batch_scores(torch.stack([transforms[t](xb) for t in candidates]).mean(0)).cpu()
            scores[group] = total / (group.stop - group.start)  # each input holds its group's mean score
    for start in range(0, n, req.batch) if superposed is None or req.per_batch is None else ():
        xb = torch.from_numpy(np.array(x[start : start + req.batch], copy=True)).to(device)  # (b, *sample)
        if superposed is None:
            s, logits = entropy_scores(model, xb, candidates, masks, transforms)
            chosen_logits[start] = logits
        else:
            mixed = torch.stack([transforms[t](xb) for t in candidates]).mean(0)  # (b, *net): the inputs' mixture
            s = superposed.scores(mixed)
        scores[start : start + len(xb)] = s.cpu()
    pick = _pick(scores, req.per_batch)  # (N,) index into candidates
    tasks = np.asarray(candidates, np.int64)[pick.numpy()] if n else np.zeros(0, np.int64)
    indices, probs = _predict(model, x, pick, candidates, masks, transforms, chosen_logits, req, device)
    return TaskInference(candidates, tasks, indices, scores.numpy(), probs, req.method, req.per_batch)


def _on(masks, device):
    return None if masks is None else {name: m.to(device) for name, m in masks.items()}


def _pick(scores: torch.Tensor, per_batch: int | None) -> torch.Tensor:
    """Index of the lowest score per input, or per group of `per_batch` consecutive inputs."""
    if per_batch is None or len(scores) == 0:
        return scores.argmin(1)
    picks = []
    for start in range(0, len(scores), per_batch):
        group = scores[start : start + per_batch]  # (g, k)
        picks.append(group.sum(0).argmin().repeat(len(group)))
    return torch.cat(picks)


@torch.no_grad()
def _predict(model, x, pick, candidates, masks, transforms, chosen_logits, req, device):
    """Head labels (N,) under each input's inferred task (and softmax rows when asked): the entropy
    rule already ran every candidate; otherwise one forward per inferred task on its inputs."""
    n = len(x)
    indices = np.zeros(n, np.int64)
    probs: list[np.ndarray | None] = [None] * n
    if chosen_logits:
        for start, logits in chosen_logits.items():
            for j, out in enumerate(logits):
                rows = (pick[start : start + len(out)] == j).nonzero().flatten()
                _fill(indices, probs, start + rows.numpy(), out[rows].cpu(), req.probabilities)
    else:
        for j, task in enumerate(candidates):
            rows = (pick == j).nonzero().flatten().numpy()
            if len(rows) == 0:
                continue
            set_task_mode(model, masks[task])
            for s in range(0, len(rows), req.batch):
                part = rows[s : s + req.batch]
                xb = torch.from_numpy(np.array(x[part], copy=True)).to(device)
                _fill(indices, probs, part, model(transforms[task](xb), task).cpu(), req.probabilities)
    return indices, (probs if req.probabilities else None)


def _fill(indices: np.ndarray, probs: list, rows: np.ndarray, logits: torch.Tensor, probabilities: bool) -> None:
    indices[rows] = logits.argmax(1).numpy()
    if probabilities:
        for r, p in zip(rows, torch.softmax(logits, 1).numpy().astype(np.float32)):
            probs[r] = p
