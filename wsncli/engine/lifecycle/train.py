"""Training one task: WSN (masked, old weights frozen) or the dense fine-tune baseline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from wsncli.engine.data.registry import TaskData
from wsncli.engine.nn.models import WSNNet
from wsncli.errors import WsnError


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


@dataclass
class TrainResult:
    masks: dict[str, torch.Tensor] | None  # bool per layer; None for the dense baseline
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0


def task_seed(seed: int, task: int) -> int:
    """The RNG seed of one task's training, derived from the run seed and the task id."""
    return (seed * 1_000_003 + task) % (2**63)


def _to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _fused_ok(device: torch.device) -> bool:
    """Fused Adam (one kernel for all parameters) exists on CPU and CUDA; it is 2-4x faster here."""
    return device.type in ("cpu", "cuda")


def _trainable_parameters(model: WSNNet, task: int, method: str) -> list[torch.nn.Parameter]:
    params = []
    for layer in model.subnet_layers().values():
        params.append(layer.weight)
        if method == "wsn":
            params.append(layer.scores)
    params.extend(model.heads[str(task)].parameters())
    return params


def _task_state(model: WSNNet, task: int) -> dict[str, torch.Tensor]:
    """Everything training this task changes: weights, scores, its head and BatchNorm statistics."""
    state = {}
    for name, layer in model.subnet_layers().items():
        state[f"{name}.weight"] = layer.weight.detach().clone()
        state[f"{name}.scores"] = layer.scores.detach().clone()
    for key, value in model.heads[str(task)].state_dict().items():
        state[f"head.{key}"] = value.clone()
    if str(task) in model.task_norms:
        for key, value in model.task_norms[str(task)].state_dict().items():
            state[f"norm.{key}"] = value.clone()
    return state


def _restore_task_state(model: WSNNet, task: int, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, layer in model.subnet_layers().items():
            layer.weight.copy_(state[f"{name}.weight"])
            layer.scores.copy_(state[f"{name}.scores"])
        model.heads[str(task)].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        if str(task) in model.task_norms:
            model.task_norms[str(task)].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("norm.")})


@torch.no_grad()
def _loss_and_accuracy(model: WSNNet, x: torch.Tensor, y: torch.Tensor, task: int, batch: int = 2048) -> tuple[float, float]:
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    total_loss, correct = 0.0, 0
    for i in range(0, x.shape[0], batch):
        logits = model(x[i : i + batch], task)  # (b, n_classes)
        total_loss += float(F.cross_entropy(logits, y[i : i + batch], reduction="sum"))
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return total_loss / x.shape[0], correct / x.shape[0]


def train_task(
    model: WSNNet,
    data: TaskData,
    settings: TrainSettings,
    frozen: dict[str, torch.Tensor] | None,
    device: torch.device,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train `settings.task` on `data`; return its mask (top-c of the best epoch's scores).

    The task's head (and BatchNorm) must already exist (`model.add_task`). `frozen` marks, per layer,
    the weights earlier tasks use: they get no gradient and are checked bit for bit afterwards.
    """
    cb = callbacks or TrainCallbacks()
    start = time.perf_counter()
    task = settings.task
    generator = torch.Generator().manual_seed(task_seed(settings.seed, task))
    torch.manual_seed(task_seed(settings.seed, task))  # dropout
    frozen_before = _frozen_values(model, frozen)
    if settings.method == "wsn":
        model.train_subnet(settings.capacity, frozen)
    else:
        model.dense()
    params = _trainable_parameters(model, task, settings.method)
    optimizer = torch.optim.Adam(params, lr=settings.lr, fused=_fused_ok(device))

    x_train, y_train = _to_tensor(data.x_train, device), _to_tensor(data.y_train, device)
    x_val, y_val = _to_tensor(data.x_val, device), _to_tensor(data.y_val, device)
    n, bs = x_train.shape[0], settings.batch_size
    n_batches = (n + bs - 1) // bs
    best_loss, best_epoch, best_state = float("inf"), 0, None
    history: list[EpochStats] = []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        if cb.on_epoch_start:
            cb.on_epoch_start(epoch, n_batches)
        order = torch.randperm(n, generator=generator).to(device)
        xs, ys = x_train[order], y_train[order]  # shuffled copy; batches are views
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for b in range(n_batches):
            xb, yb = xs[b * bs : (b + 1) * bs], ys[b * bs : (b + 1) * bs]
            logits = model(xb, task)  # (b, n_classes)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * xb.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum()
            if cb.on_batch_end:
                cb.on_batch_end(b)
        model.eval()
        val_loss, val_acc = _loss_and_accuracy(model, x_val, y_val, task)
        score = val_loss if x_val.shape[0] else -epoch  # no validation set: keep the last epoch
        is_best = score < best_loss
        if is_best:
            best_loss, best_epoch, best_state = score, epoch, _task_state(model, task)
        stats = EpochStats(epoch, float(loss_sum) / n, int(correct) / n, val_loss, val_acc, is_best)
        history.append(stats)
        if cb.on_epoch_end:
            cb.on_epoch_end(stats)
    if best_state is not None:
        _restore_task_state(model, task, best_state)
    masks = model.current_masks() if settings.method == "wsn" else None
    _check_frozen(model, frozen, frozen_before)
    model.eval()
    return TrainResult(masks, best_epoch, history, time.perf_counter() - start)


def _frozen_values(model: WSNNet, frozen: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if frozen is None:
        return {}
    return {name: layer.weight.detach()[frozen[name]].clone() for name, layer in model.subnet_layers().items()}


def _check_frozen(model: WSNNet, frozen: dict[str, torch.Tensor] | None, before: dict[str, torch.Tensor]) -> None:
    """Refuse to return a model whose frozen weights moved (would mean a bug, never a user error)."""
    for name, layer in model.subnet_layers().items():
        if name in before and not torch.equal(layer.weight.detach()[frozen[name]], before[name]):
            raise WsnError(f"internal error: frozen weights of layer {name!r} changed during training")
