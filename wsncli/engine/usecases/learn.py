"""`train-task` end to end: check the request, lock, load or create the checkpoint, train (resuming
from a snapshot when one is there), measure, and save. The checkpoint changes only by one atomic
rename at the end, after the new file has been read back by the loader."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from wsncli import __version__
from wsncli.engine.data.registry import TaskData, benchmark_info, check_options_apply, load_task, resolve_data_root
from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.nn.subnet import k_for_capacity
from wsncli.engine.nn.user import CUSTOM_ARCH
from wsncli.engine.parallel.shard import Shard, world_size_from_env
from wsncli.engine.runtime import choose_threads, resolve_device
from wsncli.engine.store.checkpoint import Checkpoint, check_model_size, load_checkpoint, save_checkpoint
from wsncli.engine.store.container import ADOPT, KEY_ENV, REQUIRE, signing_key
from wsncli.engine.store.lock import CheckpointLock
from wsncli.engine.store.paths import plan_output, remove_stale_temps, resolve
from wsncli.engine.store.schema import CheckpointMeta, TaskRecord, from_model_config
from wsncli.engine.training import snapshot as resume
from wsncli.engine.training.loop import TrainCallbacks, TrainResult, TrainSettings, train_task
from wsncli.engine.usecases.adopt import adopt
from wsncli.engine.usecases.evaluate import checkpoint_data_root
from wsncli.engine.usecases.record import accuracy_row, data_options, task_record
from wsncli.engine.usecases.request import (
    DEFAULT_BENCHMARK,
    DEFAULT_CAPACITY,
    DEFAULT_LR,
    DEFAULT_SEED,
    TaskRequest,
    check_matches,
    check_request,
)
from wsncli.errors import CheckpointError, DataError, ParallelFailure, TaskError, UsageError, WsnError

__all__ = ["LearnResult", "TaskRequest", "learn_task"]


@dataclass
class LearnResult:
    record: TaskRecord | None  # None in the processes of a parallel run other than rank 0
    created: bool
    checkpoint_bytes: int
    train: TrainResult
    learned: list[int] = field(default_factory=list)
    resumed_from_epoch: int = 0
    warnings: list[str] = field(default_factory=list)


def _new_checkpoint(req: TaskRequest, data: TaskData, data_root: Path | None) -> Checkpoint:
    benchmark = req.benchmark or DEFAULT_BENCHMARK
    info = benchmark_info(benchmark, data_root, req.n_tasks)
    arch = req.arch or info.default_arch
    extra = {"width": req.width} if req.width is not None else {}
    bias = info.default_bias if req.bias is None else req.bias
    config = ModelConfig(arch, tuple(data.input_shape), tuple(req.hidden or (100, 100)), bias=bias, **extra)
    if req.arch_module is not None:  # the user's trunk; its own layers decide the biases
        module = req.arch_module
        config = ModelConfig(CUSTOM_ARCH, tuple(data.input_shape), module=module.name, factory=module.factory)
    try:
        check_model_size(config)
    except CheckpointError as exc:
        raise UsageError(f"{exc}; choose smaller --hidden sizes or --width") from None
    seed = DEFAULT_SEED if req.seed is None else req.seed
    torch.manual_seed(seed)  # scores and weights are initialised once, here
    model = build_model(config)
    method = req.method or "wsn"
    meta = CheckpointMeta(
        benchmark=benchmark,
        model=from_model_config(config, getattr(model, "fingerprint", None)),
        seed=seed,
        method=method,
        n_tasks=req.n_tasks,
        data_root=str(data_root.resolve()) if data_root is not None else None,
        default_capacity=(req.capacity or DEFAULT_CAPACITY) if method == "wsn" else None,
        wsn_version=__version__,
        image_size=req.image_size,
        channels=req.channels,
    )
    return Checkpoint(meta=meta, model=model)


def _fit_data(ckpt: Checkpoint, data: TaskData, req: TaskRequest) -> TaskData:
    """The task's data as network inputs: as it is, or (npz, flat features) with fewer features than the
    network takes zero-padded to its width, the padding stored with the task's transform (docs/DATA.md)."""
    shape, own = tuple(ckpt.meta.model.input_shape), tuple(data.input_shape)
    if own == shape:
        return data
    first = ckpt.tasks[0].task if ckpt.tasks else None
    fixed = f" (fixed by task {first}, the first learned)" if first is not None else ""
    if ckpt.meta.benchmark == "npz" and len(own) == len(shape) == 1:
        if own[0] < shape[0]:
            return data.with_prep(replace(data.prep, padding=shape[0] - own[0]))
        raise DataError(
            f"task {req.task} inputs have {own[0]} features, the checkpoint's network takes {shape[0]}{fixed}; tasks "
            "with fewer features are zero-padded, so learn the widest task first"
        )
    raise DataError(f"task {req.task} inputs have shape {own}, the checkpoint's network takes {shape}{fixed}")


def _hint(benchmark: str, data: TaskData) -> str:
    if benchmark in ("npz", "image-folder") and not data.prep.standardized:
        return ", or --standardize (inputs on very different scales)"
    return ""


@dataclass
class _Job:
    """A train-task prepared: checkpoint (loaded or new), data, settings, and where it is written."""

    req: TaskRequest
    real: Path
    created: bool
    ckpt: Checkpoint
    data: TaskData
    data_root: Path | None
    settings: TrainSettings
    frozen: dict[str, torch.Tensor] | None
    device: torch.device
    snapshot: resume.Snapshots | None = None
    adopted: str | None = None  # what --adopt-unsigned re-verified (said as a warning)


def _prepare(req: TaskRequest, real: Path, device: torch.device, status, on_progress, on_threads=None) -> _Job:
    created = not os.path.lexists(real)
    data_root = resolve_data_root(req.data_root)
    ckpt, adopted = None, None
    if created:
        benchmark, options = req.benchmark or DEFAULT_BENCHMARK, data_options_for(req, on_progress)
        check_options_apply(benchmark, options)
    else:
        status(f"loading {req.ckpt}")
        ckpt = load_checkpoint(real, ADOPT if req.adopt_unsigned else REQUIRE, req.arch_module)
        if ckpt.signature == "unverified":  # signed, and no key here: the new file would silently lose it
            raise CheckpointError(
                f"{req.ckpt}: the checkpoint is signed; set {KEY_ENV} to the key it was signed with "
                "to add a task (without it the new file would be unsigned)"
            )
        check_matches(ckpt, req)
        benchmark, options = ckpt.meta.benchmark, data_options(ckpt, on_progress)
        data_root = checkpoint_data_root(ckpt, req.data_root)
        if ckpt.signature in ("unsigned", "invalid") and signing_key() is not None:  # --adopt-unsigned
            status(f"re-verifying every task of {req.ckpt} before adopting it")
            adopted = adopt(ckpt, req.ckpt, data_root, device)
    status(f"loading {benchmark} task {req.task}")
    n_tasks = req.n_tasks if ckpt is None else ckpt.meta.n_tasks
    data = load_task(benchmark, req.task, data_root, n_tasks, options, req.standardize)
    if ckpt is None:
        ckpt = _new_checkpoint(req, data, data_root)
    data = _fit_data(ckpt, data, req)
    meta = ckpt.meta
    info = benchmark_info(meta.benchmark, data_root, meta.n_tasks, options)
    settings = TrainSettings(
        task=req.task,
        capacity=(req.capacity or meta.default_capacity or DEFAULT_CAPACITY) if meta.method == "wsn" else 1.0,
        epochs=req.epochs or info.default_epochs,
        batch_size=req.batch_size or info.default_batch_size,
        lr=req.lr or DEFAULT_LR,
        seed=meta.seed,
        method=meta.method,
    )
    if on_threads is not None:  # the caller sets the count: the engine changes no process-wide setting
        on_threads(choose_threads(sum(l.weight.numel() for l in ckpt.model.subnet_layers().values()), req.threads))
    _check_capacity_keeps_weights(ckpt.model, settings)
    ckpt.model.to(device)
    ckpt.masks = {t: {n: m.to(device) for n, m in lm.items()} for t, lm in ckpt.masks.items()}
    torch.manual_seed(settings.seed * 7919 + req.task)  # the new head's initial weights
    ckpt.model.add_task(req.task, data.n_classes)
    ckpt.model.to(device)
    frozen = ckpt.used_weights() if settings.method == "wsn" and ckpt.learned() else None
    return _Job(req, real, created, ckpt, data, data_root, settings, frozen, device, adopted=adopted)


def _train(job: _Job, callbacks: TrainCallbacks | None, status, shard=None) -> tuple[TrainResult, int]:
    """Train the task (continuing a snapshot when there is one); returns the result and the epoch resumed after.

    Data-parallel, only rank 0 reads (or, with --restart, discards) the snapshot and writes new ones;
    every process gets the state it resumes from by one broadcast before training, so all of them
    start from the same epoch."""
    main = shard is None or shard.is_main
    snapshot = resume.Snapshots(job.real, job.ckpt, job.req, job.settings, job.data) if main else None
    if shard is None:
        state = snapshot.start(job.req.restart, status)
    else:
        state = shard.share(lambda: snapshot.start(job.req.restart, status))
    callbacks = callbacks or TrainCallbacks()
    callbacks.on_state = snapshot.write if main else None
    try:
        result = train_task(
            job.ckpt.model,
            job.data,
            job.settings,
            job.frozen,
            job.device,
            callbacks,
            state,
            _hint(job.ckpt.meta.benchmark, job.data),
            shard,
            job.req.cuda_graphs,
        )
        _check_finite(job.ckpt.model, job.req.task)
    except WsnError as exc:
        if main and not isinstance(exc, ParallelFailure):  # another process's failure: the snapshot is sound
            snapshot.remove()  # diverged or broken: continuing from it would fail the same way
        raise
    job.snapshot = snapshot
    return result, state.epoch if state else 0


def _record_and_save(job: _Job, result: TrainResult, target, status) -> tuple[TaskRecord, int, list[str]]:
    ckpt, req = job.ckpt, job.req
    warnings: list[str] = [job.adopted] if job.adopted else []
    if result.cuda_graphs.startswith("failed"):
        warnings.append(f"CUDA graph capture {result.cuda_graphs}; the steps ran eagerly (same results, slower)")
    warnings += chance_warning(req.task, result, job.data)
    row = [None] * len(ckpt.learned())
    if req.matrix and ckpt.learned():
        status("re-measuring earlier tasks for the accuracy matrix")
        row = accuracy_row(ckpt, job.data_root, job.device, on_warning=warnings.append)
    record, predictions = task_record(ckpt, job.data, job.settings, result, job.device, world_size_from_env())
    record.accuracy_row = row
    if result.masks is not None:
        ckpt.masks[req.task] = result.masks
    ckpt.preps[req.task] = job.data.prep
    ckpt.predictions[req.task] = predictions
    ckpt.meta.tasks.append(record)
    status(f"saving {req.ckpt}")
    ckpt.model.to("cpu")
    ckpt.masks = {t: {n: m.cpu() for n, m in lm.items()} for t, lm in ckpt.masks.items()}
    size = save_checkpoint(ckpt, target)
    job.snapshot.remove()
    return record, size, warnings


def learn_task(
    req: TaskRequest,
    callbacks: TrainCallbacks | None = None,
    on_status: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_threads: Callable[[int], None] | None = None,
) -> LearnResult:
    """Learn one task into the checkpoint. The file changes only by one atomic rename at the end.

    No process-wide state changes: torch's global random generator is forked (the run seeds its own
    copy, as before, and the caller's state is back afterwards); the thread count for the network is
    handed to `on_threads` (the command sets it; library callers choose their own).
    Launched by torchrun with several processes, the task is trained data-parallel (engine.parallel)."""
    status = on_status or (lambda _msg: None)
    check_request(req)
    device = resolve_device(req.device)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        if world_size_from_env() > 1:
            return _learn_parallel(req, device, callbacks, status, on_progress, on_threads)
        return _learn_here(req, device, callbacks, status, on_progress, on_threads)


def _learn_here(req: TaskRequest, device: torch.device, callbacks, status, on_progress, on_threads) -> LearnResult:
    target = plan_output(req.ckpt, what="checkpoint", allow_stream=False, error=CheckpointError)
    with CheckpointLock(req.ckpt):
        remove_stale_temps(target.real)  # left by a writer that was killed (SIGKILL, power cut)
        remove_stale_temps(resume.snapshot_path(target.real))  # and by a killed snapshot writer
        job = _prepare(req, target.real, device, status, on_progress, on_threads)
        result, resumed = _train(job, callbacks, status)
        record, size, warnings = _record_and_save(job, result, target, status)
    return LearnResult(record, job.created, size, result, job.ckpt.learned(), resumed, warnings)


def _learn_parallel(
    req: TaskRequest, device: torch.device, callbacks, status, on_progress, on_threads=None
) -> LearnResult:
    """The same, one process of several: the global rank 0 locks and writes; every phase ends at a
    barrier, and a failure anywhere ends every process with the same line and exit code."""
    shard = Shard(device)
    lock, target, clean = None, None, False

    def take_lock() -> None:
        nonlocal lock, target
        if shard.is_main:
            target = plan_output(req.ckpt, what="checkpoint", allow_stream=False, error=CheckpointError)
            lock = CheckpointLock(req.ckpt).__enter__()
            remove_stale_temps(target.real)
            remove_stale_temps(resume.snapshot_path(target.real))

    try:
        _phase(shard, take_lock)
        job = _phase(
            shard,
            lambda: _prepare(
                req, resolve(req.ckpt), shard.device, status if shard.is_main else _quiet, on_progress, on_threads
            ),
        )
        result, resumed = _phase(shard, lambda: _train(job, callbacks if shard.is_main else None, status, shard))
        shard.unwrap()
        _phase(shard, lambda: shard.check_same_state(job.ckpt.model, result.masks))
        saved = _phase(shard, lambda: _record_and_save(job, result, target, status) if shard.is_main else None)
        record = saved[0] if saved else None
        clean = True
        return LearnResult(
            record,
            job.created,
            saved[1] if saved else 0,
            result,
            job.ckpt.learned(),
            resumed,
            saved[2] if saved else [],
        )
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
        shard.close(clean)


def _phase(shard: Shard, work):
    """Run one phase on every process; any failure on any process ends every process alike."""
    try:
        value = work()
        shard.barrier()
    except Exception as exc:  # any kind: a WsnError, a RuntimeError, a lost peer (parallel.failure)
        raise shard.fail(exc) from None
    return value


def _quiet(_message: str) -> None:
    return None


def data_options_for(req: TaskRequest, on_progress=None):
    from wsncli.engine.data.registry import DataOptions

    return DataOptions(
        image_size=req.image_size, channels=req.channels, train_limit=req.train_limit, on_progress=on_progress
    )


HIGH_TRAIN_ACCURACY = 0.9


def chance_warning(task: int, result: TrainResult, data: TaskData) -> list[str]:
    """A warning when training accuracy got high while validation accuracy never beat chance (what
    always predicting the validation split's most common class gets) in any epoch."""
    history = result.history
    if not history or len(data.y_val) == 0:
        return []
    chance = float(torch.bincount(torch.from_numpy(data.y_val)).max()) / len(data.y_val)
    train = max(s.train_accuracy for s in history)
    if train < HIGH_TRAIN_ACCURACY or any(s.val_accuracy > chance for s in history):
        return []
    return [
        f"task {task}: training accuracy reached {100 * train:.2f}% but validation accuracy stayed at chance "
        f"({100 * chance:.2f}%, what always predicting one class gets) in every epoch: the network does not "
        "generalise from its training split (too few samples, or training and held-out data that differ)"
    ]


def _check_capacity_keeps_weights(model, settings: TrainSettings) -> None:
    """A mask that keeps no weight in some layer can only give chance accuracy: refuse it."""
    if settings.method != "wsn":
        return
    for name, layer in model.subnet_layers().items():
        n = layer.weight.numel()
        if k_for_capacity(n, settings.capacity) < 1:
            raise UsageError(
                f"--capacity {settings.capacity} keeps no weight of layer {name!r} ({n} weights); use at least "
                f"{1 / n:.2g}"
            )


def _check_finite(model, task: int) -> None:
    """Weights, scores and the new head must be finite: a broken task is never saved."""
    tensors = [(f"{n}.{k}", getattr(l, k)) for n, l in model.subnet_layers().items() for k in ("weight", "scores")]
    tensors += [(f"head {task} {k}", v) for k, v in model.heads[str(task)].state_dict().items()]
    if str(task) in model.task_biases:
        tensors += [(f"bias {task} {k}", v) for k, v in model.task_biases[str(task)].state_dict().items()]
    for name, tensor in tensors:
        if not bool(torch.isfinite(tensor.detach()).all()):
            raise TaskError(
                f"task {task}: training left NaN or infinite values in {name}; nothing was saved. Try a smaller --lr"
            )
