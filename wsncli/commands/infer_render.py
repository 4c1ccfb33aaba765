"""`wsn eval --infer-task`: the task-inference report as a table and as the `inference` JSON field."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from wsncli.commands.console import pct

if TYPE_CHECKING:
    from wsncli.engine.usecases.infer_eval import InferenceReport, InferenceScores


def inference_doc(report: InferenceReport):
    from wsncli.commands.schemas import Inference, InferScores, InferTask

    def scores(s: InferenceScores | None):
        if s is None:
            return None
        return InferScores(
            task_accuracy=s.task_accuracy, accuracy_inferred_task=s.accuracy_inferred_task, confusion=list(s.confusion)
        )

    return Inference(
        method=report.method,
        infer_per_batch=report.per_batch,
        task_ids=list(report.task_ids),
        tasks=[
            InferTask(
                task=t.task,
                n_test=t.n_test,
                accuracy_true_task=t.accuracy_true_task,
                per_sample=scores(t.per_sample),
                per_batch=scores(t.per_batch),
            )
            for t in report.tasks
        ],
        per_sample=scores(report.overall()),
        per_batch=scores(report.overall(batch=True)),
        accuracy_true_task=report.accuracy_true_task,
    )


def inference_tables(report: InferenceReport) -> list[Table]:
    """The per-task figures, then the confusion between tasks (per sample)."""
    batch = report.per_batch
    title = f"task inference ({report.method}), per sample" + (f"; and one task per {batch} inputs" if batch else "")
    table = Table(title=title, title_justify="left")
    columns = ["task", "task inferred (per sample)", "acc. inferred task", "acc. true task"]
    if batch:
        columns += [f"task inferred (per {batch})", f"acc. inferred (per {batch})"]
    for col in columns:
        table.add_column(col, justify="right")
    rows = [(str(t.task), t.per_sample, t.per_batch, t.accuracy_true_task) for t in report.tasks]
    overall = report.overall()
    if overall is not None and len(report.tasks) > 1:
        rows.append(("all", overall, report.overall(batch=True), report.accuracy_true_task))
    for name, sample, grouped, true in rows:
        cells = [name, pct(sample.task_accuracy), pct(sample.accuracy_inferred_task), pct(true)]
        if batch:
            cells += [pct(grouped.task_accuracy), pct(grouped.accuracy_inferred_task)]
        table.add_row(*cells)
    confusion = Table(title="task confusion, per sample: row = true task, column = inferred task", title_justify="left")
    confusion.add_column("true")
    for t in report.task_ids:
        confusion.add_column(f"task {t}", justify="right")
    for t in report.tasks:
        confusion.add_row(f"task {t.task}", *(str(c) for c in t.per_sample.confusion))
    return [table, confusion]
