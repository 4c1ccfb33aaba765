"""`wsn eval`: re-measure every learned task, show the accuracy matrix, prove that none of them changed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer
from rich.table import Table

from wsncli.commands.console import (
    ArchModuleOpt,
    arch_module,
    fail,
    handle_errors,
    pct,
    print_json,
    progress_bar,
    set_threads,
    show_progress,
    stdout,
    warn,
)
from wsncli.engine.limits import DEVICES, MAX_TASK_ID

if TYPE_CHECKING:
    from wsncli.engine.usecases.evaluate import EvalReport

_WHY = {
    "proven": "yes",
    "outputs-differ": "yes (subnetwork identical; {n} predictions differ: near-ties on this machine)",
    "data-changed": "subnetwork unchanged; test data differs from learning (accuracy not comparable)",
    "changed": "NO: subnetwork changed",
    "record-changed": "NOT PROVEN: the record was edited (data, labels or digests); damaged, not forgetting",
}


def eval_doc(ckpt: Path, report: EvalReport):
    from wsncli.commands.schemas import EvalDoc, EvalTask, Matrix, schema_id

    tasks = [
        EvalTask(
            task=t.task,
            order=t.order,
            status=t.status,
            accuracy=t.accuracy,
            accuracy_at_learning=t.accuracy_at_learning,
            change=t.accuracy - t.accuracy_at_learning if t.data_match and t.record_match else None,
            n_test=t.n_test,
            subnet_match=t.subnet_match,
            data_match=t.data_match,
            outputs_match=t.outputs_match,
            differing_outputs=t.differing_outputs,
            record_match=t.record_match,
        )
        for t in report.tasks
    ]
    m = report.matrix
    return EvalDoc(
        schema=schema_id("eval"),
        checkpoint=str(ckpt),
        tasks=tasks,
        acc=report.acc,
        bwt=report.bwt,
        bwt_task_ids=[t.task for t in report.bwt_tasks],
        forget_free=report.forget_free,
        outputs_match=report.outputs_match,
        changed=report.changed,
        outputs_differ=report.with_status("outputs-differ"),
        data_changed=report.with_status("data-changed"),
        record_changed=report.with_status("record-changed"),
        capacity_used=report.capacity_used,
        tampered=report.tampered,
        signature=report.signature,
        matrix=Matrix(task_ids=m.tasks, rows=m.rows, now=m.now),
    )


def _task_table(report: EvalReport) -> Table:
    table = Table(title="wsn eval: every task re-measured on its own test set", title_justify="left")
    for col in ("order", "task", "accuracy now", "at learning", "change", "unchanged"):
        table.add_column(col, justify="left" if col == "unchanged" else "right")
    for t in report.tasks:
        change = f"{100 * (t.accuracy - t.accuracy_at_learning):+.2f}" if t.data_match and t.record_match else "n/a"
        table.add_row(
            str(t.order),
            str(t.task),
            pct(t.accuracy),
            pct(t.accuracy_at_learning),
            change,
            _WHY[t.status].format(n=t.differing_outputs if t.differing_outputs is not None else "some"),
        )
    return table


def _matrix_table(report: EvalReport) -> Table:
    m = report.matrix
    table = Table(
        title="accuracy matrix: row = after learning that task, column = task measured (%)", title_justify="left"
    )
    table.add_column("after")
    for t in m.tasks:
        table.add_column(f"task {t}", justify="right")
    for task, row in zip(m.tasks, m.rows):
        table.add_row(f"task {task}", *("" if v is None else f"{100 * v:.2f}" for v in row))
    table.add_row("[bold]now (eval)[/]", *("-" if v is None else f"[bold]{100 * v:.2f}[/]" for v in m.now))
    return table


def _summary(report: EvalReport) -> str:
    bwt = "n/a" if report.bwt is None else f"{100 * report.bwt:+.2f} pts over {len(report.bwt_tasks)} task(s)"
    proven = [t.task for t in report.tasks if t.status in ("proven", "outputs-differ")]
    data = report.with_status("data-changed")
    damaged = report.with_status("record-changed")
    changed = (
        f"task(s) {', '.join(map(str, data))}: subnetwork unchanged, outputs not comparable (their test data changed)"
    )
    verdict = (
        "NO"
        if report.with_status("changed")
        else f"not proven (damaged record of task(s) {', '.join(map(str, damaged))})"
        if damaged
        else "proven"
        if not data
        else f"proven for task(s) {', '.join(map(str, proven))}; {changed}"
        if proven
        else f"not proven by outputs; {changed}"
    )
    capacity = f"  capacity used {pct(report.capacity_used)}" if report.capacity_used is not None else ""
    return f"ACC {pct(report.acc)}  BWT {bwt}{capacity}  forget-free: {verdict} ({len(report.tasks)} tasks re-measured)"


@handle_errors
def eval_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint to evaluate.")],
    task: Annotated[
        Optional[list[int]],
        typer.Option("--task", "-t", min=1, max=MAX_TASK_ID, help="Task(s) to evaluate (repeatable; default: all)."),
    ] = None,
    data_root: Annotated[
        Optional[Path],
        typer.Option(envvar="WSN_DATA_ROOT", help="Folder with the datasets (env WSN_DATA_ROOT; default: recorded)."),
    ] = None,
    device: Annotated[Literal[DEVICES], typer.Option(help="Where to evaluate.")] = "auto",
    arch_module_name: ArchModuleOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    infer_task: Annotated[
        bool, typer.Option("--infer-task", help="Also infer each test input's task without its id (see --infer).")
    ] = False,
    infer: Annotated[Literal["entropy", "oneshot"], typer.Option(help="--infer-task: the inference rule.")] = "entropy",
    infer_per_batch: Annotated[
        Optional[int],
        typer.Option(min=1, help="--infer-task: also one task per N consecutive test inputs, reported separately."),
    ] = None,
) -> None:
    """Re-evaluate learned tasks on their test sets; exit 3 if any task's subnetwork changed.
    With --infer-task, also infer each test input's task among all learned tasks (per sample)."""
    if not infer_task and (infer != "entropy" or infer_per_batch is not None):
        raise fail("--infer and --infer-per-batch apply with --infer-task only", 2)
    from wsncli.engine.usecases.evaluate import EvalRequest, evaluate_file

    request = EvalRequest(ckpt, task, data_root, device, arch_module(arch_module_name))
    with progress_bar(show_progress(quiet)) as progress:
        bar = progress.add_task("evaluating", total=None)

        def on_task(t: int, i: int, n: int) -> None:
            progress.update(bar, completed=i, total=n, description=f"task {t}")

        report = evaluate_file(request, on_task, on_threads=set_threads)
        inference = None
        if infer_task:
            from wsncli.engine.usecases.infer_eval import InferEvalRequest, evaluate_inference_file

            asked = InferEvalRequest(ckpt, task, data_root, device, request.arch, infer, infer_per_batch)
            progress.update(bar, description="inferring tasks")
            inference = evaluate_inference_file(asked, on_task, on_threads=set_threads)
    if json_out:
        doc = eval_doc(ckpt, report)
        if inference is not None:
            from wsncli.commands.infer_render import inference_doc

            doc.inference = inference_doc(inference)
        print_json(doc)
    else:
        stdout.print(_task_table(report))
        if len(report.matrix.tasks) > 1:
            stdout.print(_matrix_table(report))
        stdout.print(_summary(report))
        if inference is not None:
            from wsncli.commands.infer_render import inference_tables

            for table in inference_tables(inference):
                stdout.print(table)
    differ = report.with_status("outputs-differ")
    if differ and report.forget_free:
        counts = ", ".join(
            f"task {t.task}: {t.differing_outputs if t.differing_outputs is not None else 'some'} of {t.n_test}"
            for t in report.tasks
            if t.status == "outputs-differ"
        )
        warn(
            f"predictions differ although the subnetworks are bit-identical ({counts}); near-ties computed "
            "differently on this "
            "machine, thread count or device, not forgetting"
        )
    if report.changed:
        raise fail(
            f"forgetting detected: the subnetwork of task(s) {', '.join(map(str, report.changed))} changed since "
            "learned",
            3,
        )
    damaged = report.with_status("record-changed")
    if damaged:
        raise fail(
            f"{ckpt}: the record of task(s) {', '.join(map(str, damaged))} fails its record digest: what data "
            "it is measured on, its labels or its recorded digests were edited outside wsn (no parameter changed: "
            "a damaged record, not forgetting); nothing is proven for it",
            1,
        )
    if report.tampered:
        raise fail(
            f"{ckpt}: {report.tampered[0]} (edited outside wsn or "
            f"corrupt){'; and more' if len(report.tampered) > 1 else ''}; "
            "learned tasks are unaffected",
            1,
        )
