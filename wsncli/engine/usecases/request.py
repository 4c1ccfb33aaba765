"""What `wsn train-task` was asked, checked against every limit the checkpoint format has before
anything is loaded or trained (so nothing is trained that could not be saved and read back)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from wsncli.engine.data.registry import BENCHMARKS
from wsncli.engine.limits import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_HIDDEN,
    MAX_IMAGE_SIZE,
    MAX_LR,
    MAX_SEED,
    MAX_TASK_ID,
    MAX_THREADS,
    MAX_TRAIN_LIMIT,
    MAX_WIDTH,
    METHODS,
)
from wsncli.engine.nn.models import ARCHS
from wsncli.engine.nn.user import ArchModule
from wsncli.engine.store.checkpoint import Checkpoint
from wsncli.engine.store.container import KEY_ENV, signing_key
from wsncli.engine.store.schema import to_model_config
from wsncli.errors import CheckpointError, FieldError, TaskError, UsageError

DEFAULT_BENCHMARK = "split-digits"
DEFAULT_CAPACITY = 0.5
DEFAULT_LR = 1e-3
DEFAULT_SEED = 0


@dataclass
class TaskRequest:
    """What `wsn train-task` was asked; None means "the checkpoint's, else the benchmark's default"."""

    ckpt: Path
    task: int
    benchmark: str | None = None
    arch: str | None = None
    arch_module: ArchModule | None = None  # a new checkpoint's trunk, or an existing custom one's (nn.user)
    hidden: tuple[int, ...] | None = None
    width: int | None = None
    bias: bool | None = None  # per-task biases in a new checkpoint (None: the benchmark's default)
    capacity: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    device: str = "auto"
    method: str | None = None
    data_root: Path | None = None
    n_tasks: int | None = None
    threads: int | None = None
    image_size: int | None = None
    channels: int | None = None
    train_limit: int | None = None  # train on a fixed stratified subset of this many samples (not stored)
    standardize: bool | None = None
    matrix: bool = True  # re-measure every earlier task after this one (the accuracy matrix)
    restart: bool = False  # discard a resumable snapshot instead of continuing from it
    cuda_graphs: bool | None = None  # replay steps as CUDA graphs (None: on CUDA for small networks)
    adopt_unsigned: bool = False  # with a key set: re-verify an unsigned checkpoint's tasks, then sign it


def _in(field: str, value, lo, hi) -> None:
    if value is not None and (isinstance(value, bool) or not lo <= value <= hi):
        raise FieldError(field, f"must be between {lo:g} and {hi:g}, got {value!r}")


def check_request(req: TaskRequest) -> None:
    """Refuse field values that cannot work (FieldError, exit 2; it names the field, the command layer
    the option), before anything is loaded."""
    _in("task", req.task, 1, MAX_TASK_ID)
    if req.capacity is not None and not (0.0 < req.capacity <= 1.0):  # also refuses NaN
        raise FieldError("capacity", f"must be in (0, 1], got {req.capacity}")
    _in("epochs", req.epochs, 1, MAX_EPOCHS)
    _in("batch_size", req.batch_size, 1, MAX_BATCH_SIZE)
    _in("threads", req.threads, 1, MAX_THREADS)
    _in("n_tasks", req.n_tasks, 1, MAX_TASK_ID)
    _in("width", req.width, 1, MAX_WIDTH)
    _in("image_size", req.image_size, 1, MAX_IMAGE_SIZE)
    _in("train_limit", req.train_limit, 1, MAX_TRAIN_LIMIT)
    if req.channels is not None and req.channels not in (1, 3):
        raise FieldError("channels", f"must be 1 or 3, got {req.channels}")
    if req.seed is not None and not -MAX_SEED < req.seed < MAX_SEED:
        raise FieldError("seed", f"must be between {-MAX_SEED + 1} and {MAX_SEED - 1}, got {req.seed}")
    if req.lr is not None and not (0 < req.lr <= MAX_LR and math.isfinite(req.lr)):
        raise FieldError("lr", f"must be a positive number of at most {MAX_LR:g}, got {req.lr:g}")
    for what, value, choices in (
        ("benchmark", req.benchmark, BENCHMARKS),
        ("architecture", req.arch, ARCHS),
        ("method", req.method, METHODS),
    ):
        if value is not None and value not in choices:
            raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    if req.hidden is not None and any(not 1 <= h <= MAX_HIDDEN for h in req.hidden):
        raise FieldError("hidden", f"sizes must be 1..{MAX_HIDDEN}, got {'-'.join(map(str, req.hidden))}")
    if req.arch_module is not None and (req.arch is not None or req.hidden is not None or req.width is not None):
        raise UsageError("--arch-module builds the whole trunk: it takes no --arch, --hidden or --width")
    if req.method == "finetune" and req.capacity is not None:
        raise UsageError("--capacity has no meaning for --method finetune (the dense baseline uses every weight)")
    if req.adopt_unsigned and signing_key() is None:
        raise UsageError(
            f"--adopt-unsigned needs {KEY_ENV} set: it re-verifies a checkpoint, then signs it with that key"
        )


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _shown(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else repr(value)


def check_matches(ckpt: Checkpoint, req: TaskRequest) -> None:
    """Options given for an existing checkpoint must agree with it (they cannot change later); like
    options that do not apply to a new one, a disagreeing option is a usage error (exit 2)."""
    from wsncli.engine.data.registry import DataOptions, check_options_apply
    from wsncli.engine.nn.models import WIDTH_ARCHS

    meta, cfg = ckpt.meta, to_model_config(ckpt.meta.model)
    check_options_apply(meta.benchmark, DataOptions(image_size=req.image_size, channels=req.channels))
    if req.width is not None and cfg.arch not in WIDTH_ARCHS:
        raise UsageError(f"--width applies to arch {', '.join(WIDTH_ARCHS)} only, not {cfg.arch}")
    pairs = [
        ("benchmark", req.benchmark, meta.benchmark),
        ("architecture", req.arch, cfg.arch),
        ("hidden sizes", req.hidden and "-".join(map(str, req.hidden)), "-".join(map(str, cfg.hidden))),
        ("width", req.width, meta.model.width),
        ("per-task bias", req.bias, meta.model.bias),
        ("method", req.method, meta.method),
        ("seed", req.seed, meta.seed),
        ("number of tasks", req.n_tasks, meta.n_tasks),
        ("image size", req.image_size, meta.image_size),
        ("channels", req.channels, meta.channels),
    ]
    for what, asked, stored in pairs:
        if asked is not None and asked != stored:
            made = f"no fixed {what}" if stored is None else f"{what} {_shown(stored)}"
            raise UsageError(
                f"{req.ckpt}: checkpoint was made with {made}, not {_shown(asked)}; "
                f"{what} is fixed when a checkpoint is created"
            )
    if req.method is None and req.capacity is not None and meta.method == "finetune":
        raise UsageError("--capacity has no meaning for a finetune checkpoint (the dense baseline uses every weight)")
    if req.task in ckpt.learned():
        order = ckpt.learned().index(req.task) + 1
        raise TaskError(
            f"{req.ckpt}: task {req.task} is already learned (learned {ordinal(order)} of {len(ckpt.learned())}); each "
            "task is learned once"
        )
    if ckpt.tampered:
        raise CheckpointError(
            f"{req.ckpt}: {ckpt.tampered[0]} (corrupt or edited outside wsn); refusing to train on it"
        )
