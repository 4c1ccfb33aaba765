"""`train-task` end to end: lock, load or create the checkpoint, check the request, train, save."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wsncli.engine.data.registry import BENCHMARKS, benchmark_info, load_task, resolve_data_root
from wsncli.engine.lifecycle.evaluate import outputs_digest, predict, set_task_mode, subnet_digest
from wsncli.engine.lifecycle.train import TrainCallbacks, TrainResult, TrainSettings, train_task
from wsncli.engine.limits import MAX_SEED, MAX_TASK_ID, METHODS
from wsncli.engine.nn.models import ARCHS, ModelConfig, build_model
from wsncli.engine.nn.subnet import k_for_capacity
from wsncli.engine.runtime import configure_threads, resolve_device
from wsncli.engine.store.atomic import remove_stale_temps
from wsncli.engine.store.checkpoint import Checkpoint, load_checkpoint, new_meta, save_checkpoint
from wsncli.engine.store.lock import CheckpointLock
from wsncli.errors import CheckpointError, DataError, TaskError

DEFAULT_BENCHMARK = "split-digits"
DEFAULT_CAPACITY = 0.5


@dataclass
class TaskRequest:
    """What `wsn train-task` was asked; None means "the checkpoint's, else the benchmark's default"."""

    ckpt: Path
    task: int
    benchmark: str | None = None
    arch: str | None = None
    hidden: tuple[int, ...] | None = None
    capacity: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    method: str | None = None
    data_root: Path | None = None
    n_tasks: int | None = None
    threads: int | None = None


@dataclass
class LearnResult:
    record: dict
    created: bool
    checkpoint_bytes: int
    train: TrainResult
    learned: list[int] = field(default_factory=list)


def check_request(req: TaskRequest) -> None:
    """Refuse settings that cannot work, before anything is loaded."""
    if not (1 <= req.task <= MAX_TASK_ID):
        raise TaskError(f"--task must be a positive task id (1..{MAX_TASK_ID}), got {req.task}")
    if req.capacity is not None and not (0.0 < req.capacity <= 1.0):  # also refuses NaN
        raise TaskError(f"--capacity must be in (0, 1], got {req.capacity}")
    if req.epochs is not None and req.epochs < 1:
        raise TaskError(f"--epochs must be at least 1, got {req.epochs}")
    if req.batch_size is not None and req.batch_size < 1:
        raise TaskError(f"--batch-size must be at least 1, got {req.batch_size}")
    if not -MAX_SEED < req.seed < MAX_SEED:
        raise TaskError(f"--seed must be between {-MAX_SEED + 1} and {MAX_SEED - 1}, got {req.seed}")
    if not (req.lr > 0 and math.isfinite(req.lr)):
        raise TaskError(f"--lr must be a positive number, got {req.lr}")
    if req.benchmark is not None and req.benchmark not in BENCHMARKS:
        raise TaskError(f"unknown benchmark {req.benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")
    if req.arch is not None and req.arch not in ARCHS:
        raise TaskError(f"unknown architecture {req.arch!r}; choose one of: {', '.join(ARCHS)}")
    if req.method is not None and req.method not in METHODS:
        raise TaskError(f"unknown method {req.method!r}; choose one of: {', '.join(METHODS)}")


def _check_matches(ckpt: Checkpoint, req: TaskRequest) -> None:
    meta, cfg = ckpt.meta, ModelConfig.from_dict(ckpt.meta["model"])
    pairs = [
        ("benchmark", req.benchmark, meta["benchmark"]),
        ("architecture", req.arch, cfg.arch),
        ("hidden sizes", req.hidden and "-".join(map(str, req.hidden)), "-".join(map(str, cfg.hidden))),
        ("method", req.method, meta["method"]),
        ("number of tasks", req.n_tasks, meta.get("n_tasks")),
    ]
    for what, asked, stored in pairs:
        if asked is not None and asked != stored:
            raise TaskError(f"{req.ckpt}: checkpoint was made with {what} {stored!r}, not {asked!r}")
    if req.task in ckpt.learned():
        order = ckpt.learned().index(req.task) + 1
        raise TaskError(f"{req.ckpt}: task {req.task} is already learned (learned {order}. of {len(ckpt.learned())}); each task is learned once")
    if ckpt.tampered:
        raise CheckpointError(f"{req.ckpt}: tensor {ckpt.tampered[0]!r} fails its checksum (corrupt or edited outside wsn); refusing to train on it")


def _check_capacity_keeps_weights(model, capacity: float) -> None:
    """A mask that keeps no weight in some layer can only give chance accuracy: refuse it."""
    for name, layer in model.subnet_layers().items():
        n = layer.weight.numel()
        if k_for_capacity(n, capacity) < 1:
            raise TaskError(f"--capacity {capacity} keeps no weight of layer {name!r} ({n} weights); use at least {1 / n:.2g}")


def _new_checkpoint(req: TaskRequest, data_root: Path | None) -> Checkpoint:
    benchmark = req.benchmark or DEFAULT_BENCHMARK
    info = benchmark_info(benchmark, data_root, req.n_tasks)
    arch = req.arch or info.default_arch
    config = ModelConfig(arch, tuple(info.input_shape), tuple(req.hidden or (100, 100)))
    torch.manual_seed(req.seed)  # scores and weights are initialised once, here
    model = build_model(config)
    method = req.method or "wsn"
    meta = new_meta(benchmark, req.n_tasks, config, req.seed, method, str(data_root) if data_root else None)
    meta["default_capacity"] = req.capacity or DEFAULT_CAPACITY
    return Checkpoint(meta=meta, model=model)


def learn_task(
    req: TaskRequest,
    callbacks: TrainCallbacks | None = None,
    on_status: Callable[[str], None] | None = None,
) -> LearnResult:
    """Learn one task into the checkpoint. The file changes only by one atomic rename at the end."""
    status = on_status or (lambda _msg: None)
    check_request(req)
    device = resolve_device(req.device)
    with CheckpointLock(req.ckpt):
        remove_stale_temps(req.ckpt)  # left by a writer that was killed (SIGKILL, power cut)
        created = not req.ckpt.exists()
        data_root = resolve_data_root(req.data_root)
        if created:
            ckpt = _new_checkpoint(req, data_root)
        else:
            status(f"loading {req.ckpt}")
            ckpt = load_checkpoint(req.ckpt)
            _check_matches(ckpt, req)
            if data_root is None and ckpt.meta.get("data_root"):
                data_root = Path(ckpt.meta["data_root"])
        meta = ckpt.meta
        info = benchmark_info(meta["benchmark"], data_root, meta.get("n_tasks"))
        status(f"loading {meta['benchmark']} task {req.task}")
        data = load_task(meta["benchmark"], req.task, data_root, meta.get("n_tasks"))
        config = ModelConfig.from_dict(meta["model"])
        if tuple(data.input_shape) != tuple(config.input_shape):
            raise DataError(f"task {req.task} inputs have shape {tuple(data.input_shape)}, the network takes {tuple(config.input_shape)}")
        settings = TrainSettings(
            task=req.task,
            capacity=req.capacity or meta.get("default_capacity", DEFAULT_CAPACITY),
            epochs=req.epochs or info.default_epochs,
            batch_size=req.batch_size or info.default_batch_size,
            lr=req.lr,
            seed=meta["seed"],
            method=meta["method"],
        )
        configure_threads(sum(l.weight.numel() for l in ckpt.model.subnet_layers().values()), req.threads)
        _check_capacity_keeps_weights(ckpt.model, settings.capacity)
        model = ckpt.model.to(device)
        ckpt.masks = {t: {n: m.to(device) for n, m in lm.items()} for t, lm in ckpt.masks.items()}
        torch.manual_seed(settings.seed * 7919 + req.task)  # the new head's initial weights
        model.add_task(req.task, data.n_classes)
        model.to(device)
        frozen = ckpt.used_weights() if settings.method == "wsn" and ckpt.learned() else None
        result = train_task(model, data, settings, frozen, device, callbacks)
        if result.masks is not None:
            ckpt.masks[req.task] = result.masks
        record = _task_record(ckpt, req, data, settings, result, device)
        meta["tasks"].append(record)
        status(f"saving {req.ckpt}")
        model.to("cpu")
        ckpt.masks = {t: {n: m.cpu() for n, m in lm.items()} for t, lm in ckpt.masks.items()}
        size = save_checkpoint(ckpt, req.ckpt)
    return LearnResult(record, created, size, result, ckpt.learned())


def _task_record(ckpt: Checkpoint, req: TaskRequest, data, settings: TrainSettings, result: TrainResult, device) -> dict:
    """Measure the task as learned and describe it (plain data for the checkpoint)."""
    model, masks = ckpt.model, result.masks
    set_task_mode(model, masks)
    predictions = predict(model, data.x_test, req.task, device)
    accuracy = float((predictions == data.y_test).mean())
    layers = model.subnet_layers()
    density = {}
    if masks is not None:
        density = {n: int(masks[n].sum()) / layers[n].weight.numel() for n in layers}
    return {
        "task": req.task,
        "order": len(ckpt.learned()) + 1,
        "n_classes": data.n_classes,
        "classes": [int(c) for c in data.classes],
        "method": settings.method,
        "capacity": settings.capacity,
        "kept_per_layer": {n: k_for_capacity(layers[n].weight.numel(), settings.capacity) for n in layers} if masks is not None else {},
        "mask_density": density,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "seed": settings.seed,
        "device": str(device),
        "best_epoch": result.best_epoch,
        "val_accuracy": _finite_or_none(result.history[result.best_epoch - 1].val_accuracy) if result.best_epoch else None,
        "accuracy": accuracy,
        "n_test": int(data.y_test.shape[0]),
        "outputs_digest": outputs_digest(predictions),
        "subnet_digest": subnet_digest(model, req.task, masks),
        "data_digest": data.digest(),
        "train_seconds": round(result.seconds, 3),
        "learned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
