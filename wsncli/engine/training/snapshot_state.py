"""A snapshot's training state, checked against the run that would continue it before any of it is used.

Its `state` JSON (epoch, best epoch and loss, history, seconds trained) is decoded strictly and must agree with
itself and with the run's settings (an epoch before the last, one history entry per epoch); its
tensors must be exactly what this run's network, optimizer and generators hold, with their dtypes
and shapes: `model/<key>` and `best/<key>` the task's state (training.loop.task_state), `opt/<i>/<key>`
Adam's moments and step of the i-th trained parameter, `rng/generator` and `rng/torch` states that
torch accepts; and they must leave every weight an earlier task uses as the checkpoint has it (those
weights bit for bit, Adam's moments zero there: frozen weights get no gradient). Anything else raises
CheckpointError with a short reason.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from wsncli.engine.nn.models import WSNNet
from wsncli.engine.store.container import strict_json
from wsncli.engine.training.loop import EpochStats, TrainSettings, TrainState, task_state, trainable_parameters
from wsncli.errors import CheckpointError

ADAM_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq"})
_STATE_KEYS = {"epoch", "best_loss", "best_epoch", "history", "seconds"}


def _int(value, what: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise CheckpointError(f"state: {what} must be an integer from {lo} to {hi}, got {str(value)[:20]}")
    return value


def _epoch_stats(entry, i: int) -> EpochStats:
    """One history entry: exactly EpochStats' fields, ints, booleans, and numbers or null (not measured)."""
    fields = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(EpochStats)}
    if not isinstance(entry, dict) or set(entry) != set(fields):
        raise CheckpointError(f"state: history[{i}] must hold exactly {', '.join(sorted(fields))}")
    values = {}
    for name, kind in fields.items():
        value = entry[name]
        if kind == "bool" and type(value) is not bool or kind == "int" and type(value) is not int:
            raise CheckpointError(f"state: history[{i}].{name} must be {kind}, got {str(value)[:20]}")
        if kind == "float":
            if value is not None and type(value) is not float:  # what the writer writes: floats, or null for NaN
                raise CheckpointError(f"state: history[{i}].{name} must be a number or null")
            value = float("nan") if value is None else value
        values[name] = value
    return EpochStats(**values)


def _check_tensor(arrays: dict, name: str, like: torch.Tensor) -> torch.Tensor:
    arr = arrays.get(name)
    want = like.detach().cpu()
    if arr is None or arr.dtype != want.numpy().dtype or tuple(arr.shape) != tuple(want.shape):
        got = "missing" if arr is None else f"{arr.dtype} {tuple(arr.shape)}"
        raise CheckpointError(f"tensor {name[:80]!r} is {got}, expected {want.numpy().dtype} {tuple(want.shape)}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise CheckpointError(f"tensor {name[:80]!r} holds NaN or infinite values")
    return torch.from_numpy(np.array(arr))  # a copy the run owns


def _rng(arrays: dict, name: str, fresh: torch.Tensor, apply) -> torch.Tensor:
    state = _check_tensor(arrays, name, fresh)
    try:
        apply(state)  # on a scratch generator: a state torch refuses is refused here, not mid-run
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"tensor {name!r} is not a random generator state ({str(exc)[:80]})") from None
    return state


def _check_frozen(state: dict[str, torch.Tensor], prefix: str, model: WSNNet, frozen) -> None:
    """The weights earlier tasks use are the checkpoint's, bit for bit: a snapshot that changes one
    would make the task forget (training would stop at its end with an internal error)."""
    for name, layer in model.subnet_layers().items():
        mask = frozen[name].cpu()
        current, saved = layer.weight.detach().cpu()[mask], state[f"{name}.weight"][mask]
        if not torch.equal(current.view(torch.int32), saved.view(torch.int32)):
            n = int((current.view(torch.int32) != saved.view(torch.int32)).sum())
            raise CheckpointError(
                f"tensor '{prefix}{name}.weight' changes {n} weight(s) that earlier tasks use: not a snapshot of "
                "this checkpoint"
            )


def check_state(
    state_json: str, arrays: dict[str, np.ndarray], model: WSNNet, settings: TrainSettings, frozen=None
) -> TrainState:
    """The TrainState a snapshot holds, checked (module docstring); `frozen`: per layer, the weights
    earlier tasks use (None: nothing is frozen)."""
    info = strict_json(state_json.encode(), "its state")
    if not isinstance(info, dict) or set(info) != _STATE_KEYS:
        raise CheckpointError(f"state must be a JSON object of exactly {', '.join(sorted(_STATE_KEYS))}")
    epoch = _int(info["epoch"], "epoch", 1, settings.epochs - 1)  # a snapshot is written before the last epoch
    best_epoch = _int(info["best_epoch"], "best_epoch", 0, epoch)
    best_loss = info["best_loss"]
    if best_loss is not None and (type(best_loss) is not float or not math.isfinite(best_loss)):
        raise CheckpointError("state: best_loss must be a finite number or null")
    if (best_loss is None) != (best_epoch == 0):
        raise CheckpointError("state: best_loss and best_epoch disagree (one says a best epoch was found)")
    seconds = info["seconds"]
    if type(seconds) is not float or not 0.0 <= seconds <= 1e9:
        raise CheckpointError("state: seconds must be a number of seconds (0 to 1e9)")
    history = info["history"]
    if not isinstance(history, list) or len(history) != epoch:
        raise CheckpointError(f"state: history must list the {epoch} epochs done")
    stats = [_epoch_stats(entry, i) for i, entry in enumerate(history)]
    if [s.epoch for s in stats] != list(range(1, epoch + 1)):
        raise CheckpointError("state: history's epochs are not 1, 2, ... in order")
    if best_epoch and not stats[best_epoch - 1].is_best:
        raise CheckpointError(f"state: epoch {best_epoch} is not marked best in the history")
    expected = task_state(model, settings.task)
    names = {f"model/{k}" for k in expected} | {"rng/generator", "rng/torch"}
    names |= {f"best/{k}" for k in expected} if best_epoch else set()
    current = {k: _check_tensor(arrays, f"model/{k}", v) for k, v in expected.items()}
    best = {k: _check_tensor(arrays, f"best/{k}", v) for k, v in expected.items()} if best_epoch else None
    if frozen is not None:
        for prefix, state in (("model/", current), ("best/", best or {})):
            if state:
                _check_frozen(state, prefix, model, frozen)
    params = trainable_parameters(model, settings.task, settings.method)
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for name in arrays:
        if not name.startswith("opt/"):
            continue
        _, index, key = (name.split("/", 2) + ["", ""])[:3]
        if not index.isdigit() or int(index) >= len(params) or key not in ADAM_KEYS:
            raise CheckpointError(f"tensor {name[:80]!r} is not optimizer state of this run's {len(params)} parameters")
        like = torch.zeros((), dtype=torch.float32) if key == "step" else params[int(index)].detach().float()
        optimizer.setdefault(int(index), {})[key] = _check_tensor(arrays, name, like)
        names.add(name)
    weights = {id(layer.weight): name for name, layer in model.subnet_layers().items()}
    for index, entry in optimizer.items():
        if set(entry) != ADAM_KEYS:
            raise CheckpointError(
                f"optimizer state of parameter {index} lacks {', '.join(sorted(ADAM_KEYS - set(entry)))}"
            )
        name = weights.get(id(params[index]))
        if frozen is not None and name is not None:  # frozen weights get no gradient: their moments stay 0
            mask = frozen[name].cpu()
            if bool(entry["exp_avg"][mask].any()) or bool(entry["exp_avg_sq"][mask].any()):
                raise CheckpointError(
                    f"optimizer state 'opt/{index}' would move weights of layer {name!r} that earlier tasks use: "
                    "not a snapshot of this checkpoint"
                )
    unknown = sorted(set(arrays) - names)
    if unknown:
        raise CheckpointError(f"tensor {unknown[0][:80]!r} is not part of this run's state")
    generator = _rng(arrays, "rng/generator", torch.Generator().get_state(), lambda s: torch.Generator().set_state(s))
    rng = _rng(arrays, "rng/torch", torch.get_rng_state(), lambda s: torch.Generator().set_state(s))
    return TrainState(
        epoch,
        current,
        {"state": optimizer, "param_groups": None},
        generator,
        rng,
        float("inf") if best_loss is None else float(best_loss),
        best_epoch,
        best,
        stats,
        seconds,
    )
