"""`wsn train-task`: learn one task into a checkpoint (created when missing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsncli.commands.common import handle_errors, pct, print_json, progress_bar, show_progress, stderr, stdout


@handle_errors
def train_task_command(
    task: Annotated[int, typer.Option("--task", "-t", help="Task id to learn (positive integer of the benchmark).")],
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint file; created when it does not exist.")],
    benchmark: Annotated[Optional[str], typer.Option(help="split-digits (default for a new checkpoint), pmnist, split-mnist, split-fashion, split-cifar10, split-cifar100, npz.")] = None,
    arch: Annotated[Optional[str], typer.Option(help="mlp or conv (default: the benchmark's).")] = None,
    hidden: Annotated[Optional[str], typer.Option(help="MLP hidden sizes, e.g. 100-100 (new checkpoints only).")] = None,
    capacity: Annotated[Optional[float], typer.Option(help="Fraction c of each layer's weights the task's mask keeps, 0 < c <= 1 (default 0.5, or the checkpoint's).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: the benchmark's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default: the benchmark's).")] = None,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of a new checkpoint (CPU runs are bit-reproducible).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    method: Annotated[Optional[str], typer.Option(help="wsn (default) or finetune (dense baseline that forgets).")] = None,
    n_tasks: Annotated[Optional[int], typer.Option(help="Number of tasks of pmnist (default 10).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(envvar="WSN_DATA_ROOT", help="Folder with the datasets (env WSN_DATA_ROOT).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: 1 for models under 2M weights, else torch's default).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-epoch lines.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the task's record as one JSON object on stdout.")] = False,
) -> None:
    """Learn task TASK into CKPT, freezing every weight earlier tasks use."""
    from wsncli.engine.lifecycle.learn import TaskRequest, learn_task
    from wsncli.engine.lifecycle.train import EpochStats, TrainCallbacks
    from wsncli.engine.nn.models import parse_hidden
    request = TaskRequest(
        ckpt=ckpt, task=task, benchmark=benchmark, arch=arch, hidden=parse_hidden(hidden) if hidden else None,
        capacity=capacity, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
        method=method, data_root=data_root, n_tasks=n_tasks, threads=threads,
    )
    with progress_bar(show_progress(quiet)) as progress:
        bar = progress.add_task(f"task {task}", total=None, visible=False)

        def on_epoch_start(epoch: int, n_batches: int) -> None:
            progress.reset(bar, total=n_batches, description=f"task {task} epoch {epoch}", visible=True)

        def on_epoch_end(s: EpochStats) -> None:
            if not quiet:
                mark = " *" if s.is_best else ""
                progress.console.print(
                    f"epoch {s.epoch}: loss {s.train_loss:.4f} acc {pct(s.train_accuracy)} | "
                    f"val loss {s.val_loss:.4f} acc {pct(s.val_accuracy)}{mark}"
                )

        callbacks = TrainCallbacks(on_epoch_start, lambda _b: progress.advance(bar), on_epoch_end)
        # status lines only on a terminal: a refusal in a script or pipe stays one line on stderr
        status = (lambda msg: stderr.print(msg)) if show_progress(quiet) else None
        result = learn_task(request, callbacks, status)
    record = result.record
    if json_out:
        print_json({**record, "checkpoint": str(ckpt), "created": result.created, "checkpoint_bytes": result.checkpoint_bytes, "learned": result.learned})
        return
    stdout.print(
        f"learned task {record['task']} ({record['order']} of {len(result.learned)} in {ckpt}): "
        f"test accuracy {pct(record['accuracy'])}, capacity {record['capacity']}, best epoch {record['best_epoch']}, "
        f"{record['train_seconds']:.1f} s; checkpoint {result.checkpoint_bytes / 1024:.1f} KiB"
    )
