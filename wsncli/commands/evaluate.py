"""`wsn eval`: re-measure every learned task and prove that none of them changed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

if TYPE_CHECKING:
    from wsncli.engine.lifecycle.evaluate import EvalReport

from wsncli.commands.common import fail, handle_errors, pct, print_json, progress_bar, show_progress, stdout


def report_dict(report: EvalReport) -> dict:
    return {
        "tasks": [
            {
                "task": t.task, "accuracy": t.accuracy, "accuracy_at_learning": t.accuracy_at_learning,
                "unchanged": t.unchanged, "outputs_match": t.outputs_match, "subnet_match": t.subnet_match,
                "data_match": t.data_match, "n_test": t.n_test,
            }
            for t in report.tasks
        ],
        "acc": report.acc,
        "bwt": report.bwt,
        "forget_free": report.forget_free,
        "capacity_used": report.capacity_used,
        "tampered": report.tampered,
    }


def _table(report: EvalReport) -> Table:
    table = Table(title="wsn eval", title_justify="left")
    for col in ("task", "accuracy now", "at learning", "change", "unchanged"):
        table.add_column(col, justify="right" if col != "unchanged" else "left")
    for t in report.tasks:
        why = "yes" if t.unchanged else ("NO: subnetwork changed" if not t.subnet_match else "NO: outputs changed")
        if t.unchanged and not t.data_match:
            why = "yes (subnetwork; test data differs from learning)"
        table.add_row(str(t.task), pct(t.accuracy), pct(t.accuracy_at_learning), f"{100 * (t.accuracy - t.accuracy_at_learning):+.2f}", why)
    return table


@handle_errors
def eval_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint to evaluate.")],
    task: Annotated[Optional[list[int]], typer.Option("--task", "-t", help="Task(s) to evaluate (repeatable; default: all learned).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(envvar="WSN_DATA_ROOT", help="Folder with the datasets (env WSN_DATA_ROOT).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Re-evaluate learned tasks on their test sets; exit 3 if any task's outputs changed."""
    from wsncli.engine.data.registry import resolve_data_root
    from wsncli.engine.lifecycle.evaluate import evaluate_checkpoint
    from wsncli.engine.runtime import configure_threads, resolve_device
    from wsncli.engine.store.checkpoint import load_checkpoint
    checkpoint = load_checkpoint(ckpt)
    configure_threads(sum(l.weight.numel() for l in checkpoint.model.subnet_layers().values()), None)
    root = resolve_data_root(data_root)
    if root is None and checkpoint.meta.get("data_root"):
        root = Path(checkpoint.meta["data_root"])
    with progress_bar(show_progress(quiet)) as progress:
        bar = progress.add_task("evaluating", total=len(task or checkpoint.learned()))

        def on_task(t: int, i: int, n: int) -> None:
            progress.update(bar, completed=i, description=f"task {t}")

        report = evaluate_checkpoint(checkpoint, task, root, resolve_device(device), on_task)
    if json_out:
        print_json(report_dict(report))
    else:
        stdout.print(_table(report))
        stdout.print(
            f"ACC {pct(report.acc)}  BWT {100 * report.bwt:+.2f} pts  capacity used {pct(report.capacity_used)}  "
            f"forget-free: {'proven' if report.forget_free else 'NO'} ({len(report.tasks)} tasks re-measured)"
        )
    if not report.forget_free:
        raise fail(f"forgetting detected: task(s) {', '.join(map(str, report.changed))} changed since learned", 3)
    if report.tampered:
        raise fail(f"{ckpt}: tensor {report.tampered[0]!r} fails its checksum (edited outside wsn or corrupt); learned tasks are unaffected", 1)
