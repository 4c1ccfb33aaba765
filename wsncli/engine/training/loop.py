"""Training one task: WSN (masked, old weights frozen) or the dense fine-tune baseline.

The loop can stop after any epoch and continue from a `TrainState` (training.snapshot) with the
same bits on the CPU: model, optimizer, both random generators, best epoch and history are in it;
dropout masks come from a generator re-seeded every epoch (nn.dropout), so they need no state.
Between steps the loop only adds up each step's loss and correct count on the device; the host
reads them once per epoch (`_end_epoch`) and every CHECK_EVERY steps (`_check_loss`), never per step
(tests/engine/test_sync_free.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from wsncli.engine.data.device import device_transform
from wsncli.engine.data.registry import TaskData
from wsncli.engine.nn.dropout import DropoutDraw, dropout_seed, use_draw
from wsncli.engine.nn.models import WSNNet
from wsncli.engine.nn.selection import NonFiniteScores
from wsncli.engine.training.batchnorm import batch_bounds, recompute_statistics
from wsncli.engine.training.graphed import GraphedStep, graphs_pay
from wsncli.engine.training.optim import make_optimizer

if TYPE_CHECKING:
    from wsncli.engine.parallel.shard import Shard
from wsncli.errors import TaskError, WsnError

EXPLODED_LOSS = 1e3  # a mean cross-entropy above this means the run diverged
CHECK_EVERY = 256  # steps between loss checks (one host synchronisation each)
DEVICE_FLOAT_BUDGET = 2 << 30  # bytes: below, a split is transformed once on the device, else per batch


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one task's training (all recorded in the checkpoint)."""

    task: int
    capacity: float
    epochs: int
    batch_size: int
    lr: float
    seed: int
    method: str = "wsn"


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    is_best: bool


@dataclass
class TrainCallbacks:
    """Progress hooks; the command layer wires them to a progress bar. All optional."""

    on_epoch_start: Callable[[int, int], None] | None = None  # (epoch, batches in epoch)
    on_batch_end: Callable[[int], None] | None = None  # (batch index)
    on_epoch_end: Callable[[EpochStats], None] | None = None
    on_state: Callable[[TrainState], None] | None = None  # after each epoch: a resumable snapshot
    # at each epoch's start: (epochs in all, a reader of the epoch's mean training loss so far); the reader
    # synchronises once per call, so call it when a display refreshes, not per step
    on_running_loss: Callable[[int, Callable[[], float]], None] | None = None


@dataclass
class TrainState:
    """Everything needed to continue after `epoch` as if never stopped."""

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    generator: torch.Tensor
    rng: torch.Tensor
    best_loss: float
    best_epoch: int
    best: dict[str, torch.Tensor] | None
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0  # training time so far, every part before a stop included


@dataclass
class TrainResult:
    masks: dict[str, torch.Tensor] | None  # bool per layer; None for the dense baseline
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    cuda_graphs: str = "off"  # "on", "off" or "failed (why)": how the steps ran


class TrainingDiverged(TaskError):
    """The loss became NaN, infinite, or exploded: nothing is saved."""


def task_seed(seed: int, task: int) -> int:
    """The RNG seed of one task's training, derived from the run seed and the task id."""
    return (seed * 1_000_003 + task) % (2**63)


def trainable_parameters(model: WSNNet, task: int, method: str) -> list[torch.nn.Parameter]:
    params = []
    for layer in model.subnet_layers().values():
        params.append(layer.weight)
        if method == "wsn":
            params.append(layer.scores)
    params.extend(model.heads[str(task)].parameters())
    if str(task) in model.task_biases:  # the task's own biases (trained only in it, like its head)
        params.extend(model.task_biases[str(task)].parameters())
    return params


def task_state(model: WSNNet, task: int) -> dict[str, torch.Tensor]:
    """Everything training this task changes: weights, scores, its head, biases and BatchNorm statistics."""
    state = {}
    for name, layer in model.subnet_layers().items():
        state[f"{name}.weight"] = layer.weight.detach().clone()
        state[f"{name}.scores"] = layer.scores.detach().clone()
    for key, value in model.heads[str(task)].state_dict().items():
        state[f"head.{key}"] = value.clone()
    if str(task) in model.task_norms:
        for key, value in model.task_norms[str(task)].state_dict().items():
            state[f"norm.{key}"] = value.clone()
    if str(task) in model.task_biases:
        for key, value in model.task_biases[str(task)].state_dict().items():
            state[f"bias.{key}"] = value.clone()
    return state


def restore_task_state(model: WSNNet, task: int, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, layer in model.subnet_layers().items():
            layer.weight.copy_(state[f"{name}.weight"])
            layer.scores.copy_(state[f"{name}.scores"])
        model.heads[str(task)].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        if str(task) in model.task_norms:
            model.task_norms[str(task)].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("norm.")})
        if str(task) in model.task_biases:
            model.task_biases[str(task)].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("bias.")})


class DeviceSplit:
    """One split on the device: network inputs when they fit the budget, else raw (uint8) inputs
    transformed batch by batch. Both give the same bits."""

    def __init__(self, data: TaskData, split: str, device: torch.device) -> None:
        raw = getattr(data, f"raw_{split}")
        self.y = torch.from_numpy(np.ascontiguousarray(getattr(data, f"y_{split}"))).to(device)
        if raw.size * 4 <= DEVICE_FLOAT_BUDGET or raw.dtype == np.float32:
            self.x, self.transform = (
                torch.from_numpy(np.ascontiguousarray(getattr(data, f"x_{split}"))).to(device),
                None,
            )
        else:
            self.x, self.transform = (
                torch.from_numpy(np.ascontiguousarray(raw)).to(device),
                device_transform(data.prep, device),
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.transform is None else self.transform(x)


@torch.no_grad()
def _loss_and_accuracy(model: WSNNet, split: DeviceSplit, task: int, batch: int = 2048) -> tuple[float, float]:
    if len(split) == 0:
        return float("nan"), float("nan")
    total_loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.long, device=split.x.device)
    for i in range(0, len(split), batch):
        logits = model(split.inputs(split.x[i : i + batch]), task)  # (b, n_classes)
        y = split.y[i : i + batch]
        total_loss += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    return float(total_loss) / len(split), int(correct) / len(split)


def _diverged(settings: TrainSettings, epoch: int, what: str, hint: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"task {settings.task}: {what} in epoch {epoch}; nothing was saved. Try a smaller --lr (now "
        f"{settings.lr:g}){hint}"
    )


def _check_loss(
    loss_sum: torch.Tensor, steps: int, settings: TrainSettings, epoch: int, hint: str, model: WSNNet
) -> None:
    """One host synchronisation: stop when the mean loss of the last steps is not finite or exploded,
    or when a weight or score is no longer finite."""
    mean = float(loss_sum) / max(steps, 1)
    if not (math.isfinite(mean) and mean <= EXPLODED_LOSS):
        what = (
            "became NaN" if math.isnan(mean) else "became infinite" if math.isinf(mean) else f"exploded to {mean:.3g}"
        )
        raise _diverged(settings, epoch, f"the training loss {what}", hint)
    finite = torch.stack(
        [torch.isfinite(p).all() for layer in model.subnet_layers().values() for p in (layer.weight, layer.scores)]
    )
    if not bool(finite.all()):
        raise _diverged(settings, epoch, "weights or scores became NaN or infinite", hint)


def train_task(
    model: WSNNet,
    data: TaskData,
    settings: TrainSettings,
    frozen: dict[str, torch.Tensor] | None,
    device: torch.device,
    callbacks: TrainCallbacks | None = None,
    resume: TrainState | None = None,
    diverged_hint: str = "",
    shard: Shard | None = None,
    cuda_graphs: bool | None = None,
) -> TrainResult:
    """Train `settings.task` on `data`; return its mask (top-c of the best epoch's scores).

    The task's head (and BatchNorm) must already exist (`model.add_task`). `frozen` marks, per layer,
    the weights earlier tasks use: they get no gradient and are checked bit for bit afterwards.
    `shard` (engine.parallel) makes this process train its part of every batch, data-parallel;
    `cuda_graphs` replays each step as one CUDA graph (None: where it pays, training.graphed).
    """
    run = _Run(model, data, settings, frozen, device, callbacks or TrainCallbacks(), diverged_hint, shard, cuda_graphs)
    try:
        if resume is not None:
            run.restore(resume)
        run.build_step()  # after the restore: DDP broadcasts rank 0's state, a graph captures the restored one
        for epoch in range(run.first, settings.epochs + 1):
            run.epoch(epoch)
        return run.finish()
    except NonFiniteScores as exc:
        raise _diverged(settings, len(run.history) + 1, f"training left {exc}", diverged_hint) from None
    finally:
        use_draw(model, None)


class _Run:
    """One task's training: model, optimizer, generators, best epoch and history."""

    def __init__(self, model, data, settings, frozen, device, cb, hint, shard, cuda_graphs=None) -> None:
        self.model, self.settings, self.frozen, self.device, self.cb, self.hint = (
            model,
            settings,
            frozen,
            device,
            cb,
            hint,
        )
        self.start = time.perf_counter()
        self.generator = torch.Generator().manual_seed(task_seed(settings.seed, settings.task))
        torch.manual_seed(task_seed(settings.seed, settings.task))  # anything drawing from torch's own generator
        self.dropout = DropoutDraw(torch.Generator(device=device))  # re-seeded per epoch in `epoch`
        use_draw(model, self.dropout)
        self.frozen_before = _frozen_values(model, frozen)
        if settings.method == "wsn":
            model.train_subnet(settings.capacity, frozen)
        else:
            model.dense()
        params = trainable_parameters(model, settings.task, settings.method)
        n_weights = sum(layer.weight.numel() for layer in model.subnet_layers().values())
        graphed = shard is None and graphs_pay(device, n_weights, cuda_graphs)
        self.optimizer = make_optimizer(model, params, settings.method, settings.lr, device, graphed, shard is not None)
        self.shard, self.params, self.graphed = shard, params, graphed
        self.forward, self.step = model, self._step
        self.train, self.val = DeviceSplit(data, "train", device), DeviceSplit(data, "val", device)
        self.best_loss, self.best_epoch, self.best_state, self.history, self.first = float("inf"), 0, None, [], 1

    def restore(self, state: TrainState) -> None:
        restore_task_state(self.model, self.settings.task, state.model)
        saved = self.optimizer.state_dict()  # this run's param groups, the snapshot's moments and step counts
        saved["state"] = state.optimizer["state"]
        self.optimizer.load_state_dict(saved)
        self.generator.set_state(state.generator)
        torch.set_rng_state(state.rng)
        self.best_loss, self.best_epoch, self.best_state, self.history = (
            state.best_loss,
            state.best_epoch,
            state.best,
            list(state.history),
        )
        self.first = state.epoch + 1
        self.start -= state.seconds  # the task's train_seconds count the parts before the stop too

    def build_step(self) -> None:
        """The step as it runs: this process's DDP module (data-parallel) or a CUDA graph, else eager."""
        s = self.settings
        if self.shard is not None:
            self.forward = self.shard.wrap(self.model, s.task, self.params)
        elif self.graphed:
            self.step = GraphedStep(self.model, s.task, self.optimizer, self._step, s.batch_size, [self.dropout])

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch; returns (loss x samples, correct) of this process's part."""
        self.dropout.total, self.dropout.start = xb.shape[0], 0
        if self.shard is not None:  # this process's part of the batch (parallel.shard)
            return self.shard.step(self.forward, self.optimizer, self.settings.task, self.dropout, xb, yb)
        logits = self.forward(xb, self.settings.task)  # (b, n_classes)
        loss = F.cross_entropy(logits, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach() * xb.shape[0], (logits.detach().argmax(1) == yb).sum()

    def epoch(self, epoch: int) -> None:
        s, cb = self.settings, self.cb
        bounds = batch_bounds(len(self.train), s.batch_size)  # a lone last sample joins the batch before
        n_batches = len(bounds)
        self.model.train()
        if cb.on_epoch_start:
            cb.on_epoch_start(epoch, n_batches)
        xs, ys = self._shuffled(epoch)  # batches are views of this copy
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        checked, checked_n = torch.zeros((), device=self.device), 0  # loss_sum and samples at the last check
        b = -1  # the batch under way, read (late-bound) by the running-loss reader
        if cb.on_running_loss:
            cb.on_running_loss(s.epochs, lambda: float(loss_sum) / bounds[b][1] if b >= 0 else math.nan)
        for b, (lo, hi) in enumerate(bounds):
            batch_loss, batch_correct = self.step(self.train.inputs(xs[lo:hi]), ys[lo:hi])
            loss_sum += batch_loss
            correct += batch_correct
            if (b + 1) % CHECK_EVERY == 0:
                seen = hi
                total = self._global(loss_sum)
                _check_loss(total - checked, seen - checked_n, s, epoch, self.hint, self.model)
                checked, checked_n = total, seen
            if cb.on_batch_end:
                cb.on_batch_end(b)
        self._end_epoch(epoch, loss_sum, correct)

    def _shuffled(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split in this epoch's order (drawn on the CPU: one host-to-device copy per epoch)."""
        self.dropout.generator.manual_seed(dropout_seed(self.settings.seed, self.settings.task, epoch))
        order = torch.randperm(len(self.train), generator=self.generator).to(self.device)
        return self.train.x[order], self.train.y[order]

    def _end_epoch(self, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        """The epoch's figures read on the host (once), validation, the best epoch and the snapshot."""
        s, cb, task, n = self.settings, self.cb, self.settings.task, len(self.train)
        loss_sum, correct = self._global(loss_sum), self._global(correct)
        _check_loss(loss_sum, n, s, epoch, self.hint, self.model)
        # exact BatchNorm statistics, kept with the epoch's state
        recompute_statistics(self.model, task, self.train, s.batch_size)
        self.model.eval()
        val_loss, val_acc = _loss_and_accuracy(self.model, self.val, task)
        score = val_loss if len(self.val) else -epoch  # no validation set: keep the last epoch
        is_best = score < self.best_loss
        if is_best:
            self.best_loss, self.best_epoch, self.best_state = score, epoch, task_state(self.model, task)
        stats = EpochStats(epoch, float(loss_sum) / n, int(correct) / n, val_loss, val_acc, is_best)
        self.history.append(stats)
        if cb.on_epoch_end:
            cb.on_epoch_end(stats)
        if cb.on_state and epoch < s.epochs:
            cb.on_state(
                TrainState(
                    epoch,
                    task_state(self.model, task),
                    self.optimizer.state_dict(),
                    self.generator.get_state(),
                    torch.get_rng_state(),
                    self.best_loss,
                    self.best_epoch,
                    self.best_state,
                    list(self.history),
                    time.perf_counter() - self.start,
                )
            )

    def _global(self, value: torch.Tensor) -> torch.Tensor:
        """A per-process sum, summed over every process (itself when not data-parallel)."""
        return value.clone() if self.shard is None else self.shard.sum(value)

    def finish(self) -> TrainResult:
        if self.best_state is not None:
            restore_task_state(self.model, self.settings.task, self.best_state)
        masks = self.model.current_masks() if self.settings.method == "wsn" else None
        _check_frozen(self.model, self.frozen, self.frozen_before)
        self.model.eval()
        graphs = (
            "off"
            if not isinstance(self.step, GraphedStep)
            else (f"failed ({self.step.failed})" if self.step.failed else "on")
        )
        return TrainResult(masks, self.best_epoch, self.history, time.perf_counter() - self.start, graphs)


def _frozen_values(model: WSNNet, frozen: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if frozen is None:
        return {}
    return {name: layer.weight.detach()[frozen[name]].clone() for name, layer in model.subnet_layers().items()}


def _check_frozen(model: WSNNet, frozen: dict[str, torch.Tensor] | None, before: dict[str, torch.Tensor]) -> None:
    """Refuse to return a model whose frozen weights moved (would mean a bug, never a user error)."""
    for name, layer in model.subnet_layers().items():
        if name in before and not torch.equal(layer.weight.detach()[frozen[name]], before[name]):
            raise WsnError(f"internal error: frozen weights of layer {name!r} changed during training")
