"""A learned task's record: measured right after training (accuracy, predictions, digests), and each
earlier task re-measured (the accuracy matrix's row). Also how any recorded task's data is reloaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.data.registry import DataOptions, TaskData, load_task
from wsncli.engine.nn.subnet import k_for_capacity
from wsncli.engine.store.checkpoint import Checkpoint, prep_spec, task_input_shape
from wsncli.engine.store.schema import TaskRecord
from wsncli.engine.training.loop import TrainResult, TrainSettings
from wsncli.engine.usecases.outputs import outputs_digest, predict, set_task_mode, subnet_digest
from wsncli.errors import DataError, WsnError


def data_options(ckpt: Checkpoint, on_progress=None) -> DataOptions:
    return DataOptions(image_size=ckpt.meta.image_size, channels=ckpt.meta.channels, on_progress=on_progress)


def recorded_task_data(ckpt: Checkpoint, task: int, data_root: Path | None, on_progress=None) -> TaskData:
    """Task `task`'s data as it was learned: under the transform stored with it (versions 2 and 3), or
    the benchmark's fixed one (version-1 records, which had no standardisation)."""
    meta = ckpt.meta
    stored = ckpt.preps.get(task)
    data = load_task(
        meta.benchmark, task, data_root, meta.n_tasks, data_options(ckpt, on_progress), standardize_inputs=False
    )
    learned_on = task_input_shape(ckpt, task)
    if tuple(data.input_shape) != learned_on:
        where = f" under {data_root}" if data_root is not None else ""
        raise DataError(
            f"task {task}: the data{where} has samples of shape {tuple(data.input_shape)}, but the task was learned "
            f"on samples of shape {learned_on}; point --data-root at the data it was learned on"
        )
    return data if stored is None else data.with_prep(stored)


def task_record(
    ckpt: Checkpoint,
    data: TaskData,
    settings: TrainSettings,
    result: TrainResult,
    device: torch.device,
    world_size: int = 1,
) -> tuple[TaskRecord, np.ndarray]:
    """Measure the task as learned and describe it; returns the record and its test predictions."""
    model, masks, task = ckpt.model, result.masks, settings.task
    set_task_mode(model, masks)
    predictions = predict(model, data.x_test, task, device)
    layers = model.subnet_layers()
    wsn = masks is not None
    record = TaskRecord(
        task=task,
        order=len(ckpt.learned()) + 1,
        n_classes=data.n_classes,
        classes=list(data.classes),
        method=settings.method,
        accuracy=float((predictions == data.y_test).mean()),
        n_test=int(data.y_test.shape[0]),
        outputs_digest=outputs_digest(predictions),
        subnet_digest=subnet_digest(model, task, masks, data.prep),
        data_digest=data.digest(),
        capacity=settings.capacity if wsn else None,
        kept_per_layer={n: k_for_capacity(layers[n].weight.numel(), settings.capacity) for n in layers} if wsn else {},
        mask_density={n: int(masks[n].sum()) / layers[n].weight.numel() for n in layers} if wsn else {},
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
        device=str(device),
        best_epoch=result.best_epoch,
        val_accuracy=_finite_or_none(result.history[result.best_epoch - 1].val_accuracy) if result.best_epoch else None,
        train_seconds=round(result.seconds, 3),
        learned_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        preprocess=prep_spec(data.prep),
        world_size=world_size,
        input_dtype=np.dtype(data.raw_train.dtype).name,
    )
    return record, predictions


def accuracy_row(
    ckpt: Checkpoint,
    data_root: Path | None,
    device: torch.device,
    on_task: Callable[[int, int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[float | None]:
    """Every learned task's accuracy now, in learning order (None where its data cannot be loaded)."""
    row: list[float | None] = []
    learned = ckpt.learned()
    for i, task in enumerate(learned):
        if on_task:
            on_task(task, i, len(learned))
        try:
            data = recorded_task_data(ckpt, task, data_root)
        except WsnError as exc:
            if on_warning:
                on_warning(f"task {task} not re-measured for the accuracy matrix: {exc}")
            row.append(None)
            continue
        set_task_mode(ckpt.model, ckpt.masks.get(task))
        row.append(float((predict(ckpt.model, data.x_test, task, device) == data.y_test).mean()))
    return row


def _finite_or_none(x: float) -> float | None:
    return x if np.isfinite(x) else None
