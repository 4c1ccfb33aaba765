"""`wsn train-task`: learn one task into a checkpoint (created when missing)."""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from wsncli.commands.console import (
    ArchModuleOpt,
    arch_module,
    handle_errors,
    pct,
    positive_up_to,
    print_json,
    progress_bar,
    set_threads,
    show_progress,
    stderr,
    stdout,
    warn,
)
from wsncli.engine.limits import (
    ARCHS,
    BENCHMARKS,
    DEVICES,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_LR,
    MAX_SEED,
    MAX_TASK_ID,
    MAX_THREADS,
    MAX_TRAIN_LIMIT,
    MAX_WIDTH,
    METHODS,
)
from wsncli.interrupts import add_interrupt_hint

TaskOpt = Annotated[
    int,
    typer.Option("--task", "-t", min=1, max=MAX_TASK_ID, help="Task id to learn (positive integer of the benchmark)."),
]
CkptOpt = Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint file; created when it does not exist.")]


@handle_errors
def train_task_command(
    task: TaskOpt,
    ckpt: CkptOpt,
    benchmark: Annotated[
        Optional[Literal[BENCHMARKS]], typer.Option(help="Benchmark of a new checkpoint (default split-digits).")
    ] = None,
    arch: Annotated[
        Optional[Literal[ARCHS]], typer.Option(help="Network of a new checkpoint (default: the benchmark's).")
    ] = None,
    arch_module_name: ArchModuleOpt = None,
    hidden: Annotated[Optional[str], typer.Option(help="MLP hidden sizes of a new checkpoint, e.g. 100-100.")] = None,
    width: Annotated[
        Optional[int], typer.Option(min=1, max=MAX_WIDTH, help="resnet18 base width nf (default 20).")
    ] = None,
    bias: Annotated[
        Optional[bool],
        typer.Option(
            "--bias/--no-bias",
            help="A new checkpoint's masked layers get a bias per task (default: on for npz).",
        ),
    ] = None,
    capacity: Annotated[
        Optional[float],
        typer.Option(
            callback=positive_up_to(1.0),
            help="Fraction c of each layer's weights the mask keeps, 0 < c <= 1 (default 0.5).",
        ),
    ] = None,
    epochs: Annotated[
        Optional[int], typer.Option(min=1, max=MAX_EPOCHS, help="Epochs (default: the benchmark's).")
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(min=1, max=MAX_BATCH_SIZE, help="Batch size (default: the benchmark's).")
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(callback=positive_up_to(MAX_LR), help=f"Adam learning rate, 0 < lr <= {MAX_LR:g} (default 1e-3)."),
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(min=-MAX_SEED + 1, max=MAX_SEED - 1, help="Seed of a new checkpoint (default 0).")
    ] = None,
    device: Annotated[Literal[DEVICES], typer.Option(help="Where to train.")] = "auto",
    method: Annotated[
        Optional[Literal[METHODS]], typer.Option(help="wsn (default) or finetune (the dense baseline that forgets).")
    ] = None,
    n_tasks: Annotated[
        Optional[int], typer.Option(min=1, max=MAX_TASK_ID, help="Number of tasks of the benchmark (pmnist: 10).")
    ] = None,
    data_root: Annotated[
        Optional[Path], typer.Option(envvar="WSN_DATA_ROOT", help="Folder with the datasets (env WSN_DATA_ROOT).")
    ] = None,
    image_size: Annotated[
        Optional[int],
        typer.Option(min=1, max=MAX_IMAGE_SIZE, help="Images: resize to NxN (MNIST-style: zero-pad, e.g. 32)."),
    ] = None,
    channels: Annotated[Optional[int], typer.Option(min=1, max=3, help="image-folder: 1 or 3 channels.")] = None,
    train_limit: Annotated[
        Optional[int],
        typer.Option(min=1, max=MAX_TRAIN_LIMIT, help="Train on a fixed stratified subset of N training images."),
    ] = None,
    standardize: Annotated[
        Optional[bool],
        typer.Option(
            "--standardize/--no-standardize",
            help="Per-feature mean/std from the task's train split (default: npz, image-folder).",
        ),
    ] = None,
    matrix: Annotated[
        bool,
        typer.Option("--matrix/--no-matrix", help="Re-measure every earlier task afterwards (the accuracy matrix)."),
    ] = True,
    restart: Annotated[
        bool, typer.Option(help="Discard a resumable snapshot of this task instead of continuing it.")
    ] = False,
    adopt_unsigned: Annotated[
        bool,
        typer.Option(
            "--adopt-unsigned",
            help="With WSN_CHECKPOINT_KEY set: accept an unsigned (or otherwise signed) checkpoint after "
            "re-verifying every task against its recorded data, and sign it.",
        ),
    ] = False,
    threads: Annotated[
        Optional[int], typer.Option(min=1, max=MAX_THREADS, help="CPU threads (default: 1 under 2M weights).")
    ] = None,
    cuda_graphs: Annotated[
        Optional[bool],
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="Replay each step as a CUDA graph (default: on CUDA under 2M weights).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-epoch lines.")] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the task's record as one JSON object on stdout.")
    ] = False,
) -> None:
    """Learn task TASK into CKPT, freezing every weight earlier tasks use."""
    from wsncli.engine.nn.models import parse_hidden
    from wsncli.engine.training.loop import EpochStats, TrainCallbacks
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    request = TaskRequest(
        ckpt=ckpt,
        task=task,
        benchmark=benchmark,
        arch=arch,
        arch_module=arch_module(arch_module_name),
        hidden=parse_hidden(hidden) if hidden is not None else None,
        width=width,
        bias=bias,
        capacity=capacity,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        method=method,
        data_root=data_root,
        n_tasks=n_tasks,
        threads=threads,
        image_size=image_size,
        channels=channels,
        train_limit=train_limit,
        standardize=standardize,
        matrix=matrix,
        restart=restart,
        cuda_graphs=cuda_graphs,
        adopt_unsigned=adopt_unsigned,
    )
    quiet = quiet or os.environ.get("RANK", "0") != "0"  # in a torchrun group, rank 0 reports
    add_interrupt_hint(partial(resume_hint, ckpt, task))
    live = LiveTraining()
    with progress_bar(show_progress(quiet), live.text) as progress:
        bar = progress.add_task(f"task {task}", total=None, visible=False)

        def on_epoch_start(epoch: int, n_batches: int) -> None:
            live.epoch = epoch
            progress.reset(bar, total=n_batches, description=f"task {task}", visible=True)

        def on_epoch_end(s: EpochStats) -> None:
            if not quiet:
                mark = " *" if s.is_best else ""
                progress.console.print(
                    f"epoch {s.epoch}: loss {s.train_loss:.4f} acc {pct(s.train_accuracy)} | "
                    f"val loss {s.val_loss:.4f} acc {pct(s.val_accuracy)}{mark}"
                )

        def on_decode(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total, description="decoding images", visible=True)

        callbacks = TrainCallbacks(
            on_epoch_start, lambda _b: progress.advance(bar), on_epoch_end, on_running_loss=live.start_epoch
        )
        # status lines only on a terminal: a refusal in a script or pipe stays one line on stderr
        status = (lambda msg: stderr.print(msg)) if show_progress(quiet) else None
        result = learn_task(request, callbacks, status, on_decode, on_threads=set_threads)
    if result.record is None:
        return
    for message in result.warnings:
        warn(message)
    if json_out:
        print_json(train_doc(ckpt, result))
        return
    record = result.record
    resumed = f", resumed after epoch {result.resumed_from_epoch}" if result.resumed_from_epoch else ""
    capacity_text = f"capacity {record.capacity}, " if record.capacity is not None else ""
    stdout.print(
        f"learned task {record.task} ({record.order} of {len(result.learned)} in {ckpt}): "
        f"test accuracy {pct(record.accuracy)}, {capacity_text}best epoch {record.best_epoch}, "
        f"{record.train_seconds:.1f} s{resumed}; checkpoint {result.checkpoint_bytes / 1024:.1f} KiB"
    )


def typed_command() -> str:
    """The command line as typed (`wsn ...`), when this process runs wsn's own entry point."""
    name = Path(sys.argv[0]).name
    if name in ("wsn", "__main__.py"):
        return shlex.join(["wsn", *sys.argv[1:]])
    return ""


def resume_hint(ckpt: Path, task: int) -> str | None:
    """After Ctrl-C: where task's finished epochs are kept and the command that continues them."""
    from wsncli.engine.store.paths import resolve
    from wsncli.engine.training.snapshot import snapshot_path

    snapshot = snapshot_path(resolve(ckpt))
    if not os.path.lexists(snapshot):
        return None
    command = typed_command()
    again = f"run `{command}` again" if command else "run the same command again"
    return (
        f"task {task}'s finished epochs are kept in {snapshot}: {again} to continue from them "
        "(add --restart to start the task over)"
    )


class LiveTraining:
    """The progress bar's epoch total and running loss, read from the engine when the bar refreshes."""

    def __init__(self) -> None:
        self.epoch = 0
        self.epochs: int | None = None
        self.loss: Callable[[], float] | None = None

    def start_epoch(self, epochs: int, loss: Callable[[], float]) -> None:
        self.epochs, self.loss = epochs, loss

    def text(self) -> str:
        """'epoch 2/20 loss 0.4213' ('loss -' before the first batch ends)."""
        value = math.nan if self.loss is None else self.loss()
        loss = f"loss {value:.4f}" if math.isfinite(value) else "loss -"
        return f"epoch {self.epoch}/{self.epochs or '?'} {loss}" if self.epoch else ""


def train_doc(ckpt: Path, result):
    from wsncli.commands.schemas import LearnedTask, TrainTaskDoc, schema_id

    r = result.record
    task = LearnedTask(
        task=r.task,
        order=r.order,
        n_classes=r.n_classes,
        classes=list(r.classes),
        method=r.method,
        capacity=r.capacity,
        accuracy=r.accuracy,
        val_accuracy=r.val_accuracy,
        accuracy_row=list(r.accuracy_row),
        kept_per_layer=dict(r.kept_per_layer),
        epochs=r.epochs,
        batch_size=r.batch_size,
        lr=r.lr,
        seed=r.seed,
        device=r.device,
        best_epoch=r.best_epoch,
        train_seconds=r.train_seconds,
        standardized=bool(r.preprocess and r.preprocess.standardized),
        n_test=r.n_test,
    )
    return TrainTaskDoc(
        schema=schema_id("train-task"),
        checkpoint=str(ckpt),
        created=result.created,
        task=task,
        task_ids=list(result.learned),
        checkpoint_bytes=result.checkpoint_bytes,
        resumed_from_epoch=result.resumed_from_epoch,
        warnings=list(result.warnings),
    )
