"""A task's function and its fingerprints: task mode, the input transform on the device, predictions,
the outputs digest and the subnetwork digest (what proves a task unchanged)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import torch

from wsncli.engine.data.device import device_transform as device_transform  # re-exported
from wsncli.engine.data.preprocess import Preprocess
from wsncli.engine.nn.base import set_task_mode as set_task_mode  # re-exported
from wsncli.engine.nn.models import WSNNet
from wsncli.engine.store.checkpoint import task_arrays


@torch.no_grad()
def predict_logits(
    model: WSNNet,
    x: np.ndarray,
    task: int,
    device: torch.device,
    batch: int = 2048,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits (N, n_classes) on the CPU for inputs x (N, *sample); model must be in task mode.
    `transform` maps raw inputs to network inputs (default: x already is)."""
    out = []
    for i in range(0, x.shape[0], batch):
        xb = torch.from_numpy(np.array(x[i : i + batch], copy=True)).to(device)  # a copy: inputs may be read-only
        if transform is not None:
            xb = transform(xb)
        out.append(model(xb, task).cpu())  # (b, n_classes)
    n_classes = model.heads[str(task)].out_features
    return torch.cat(out) if out else torch.zeros(0, n_classes)


def predict(model: WSNNet, x: np.ndarray, task: int, device: torch.device, batch: int = 2048) -> np.ndarray:
    """Predicted head labels (N,) int64 for network inputs x (N, *input_shape)."""
    return predict_logits(model, x, task, device, batch).argmax(1).numpy().astype(np.int64)


def outputs_digest(predictions: np.ndarray) -> str:
    """sha256 of the predicted labels as little-endian int64."""
    return hashlib.sha256(predictions.astype("<i8").tobytes()).hexdigest()


def subnet_digest(
    model: WSNNet, task: int, masks: dict[str, torch.Tensor] | None, prep: Preprocess | None = None, version: int = 3
) -> str:
    """sha256 over every parameter task's outputs depend on: the masked weights (values under the
    mask, in flat order) and the mask bits, then (version 3) every tensor the task owns as stored
    (head, BatchNorm statistics, per-task biases, transform: store.checkpoint.task_arrays), sorted by
    name; versions 1 and 2 hashed the head, norms and biases by key, and (2) the transform with its
    record fields.
    Device-independent (docs/CHECKPOINT.md section 6)."""
    h = hashlib.sha256()
    for name, layer in model.subnet_layers().items():
        w = layer.weight.detach().cpu()
        if masks is None:
            h.update(w.contiguous().numpy().tobytes())
        else:
            m = masks[name].cpu()
            h.update(np.packbits(m.numpy().reshape(-1)).tobytes())
            h.update(w[m].contiguous().numpy().tobytes())
    if version >= 3:
        for name, arr in sorted(task_arrays(model, task, prep).items()):
            h.update(f"{name}:{arr.dtype.str}{list(arr.shape)};".encode())
            h.update(arr.reshape(-1).view(np.uint8))
        return h.hexdigest()
    for key, value in sorted(model.heads[str(task)].state_dict().items()):
        h.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    if str(task) in model.task_norms:
        for key, value in sorted(model.task_norms[str(task)].state_dict().items()):
            h.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    if str(task) in model.task_biases:
        for name, bias in zip(model.subnet_layers(), model.task_biases[str(task)]):
            h.update(f"bias:{name}".encode() + bias.detach().cpu().contiguous().numpy().tobytes())
    if version >= 2 and prep is not None:
        h.update(f"prep:{float(prep.scale)!r}:{int(prep.divide)}:{list(prep.mean.shape)}".encode())
        h.update(np.ascontiguousarray(prep.mean, "<f4").tobytes() + np.ascontiguousarray(prep.std, "<f4").tobytes())
        if prep.permutation is not None:
            h.update(np.ascontiguousarray(prep.permutation, "<i8").tobytes())
        if prep.padding:
            h.update(f"padding:{prep.padding}".encode())
    return h.hexdigest()
