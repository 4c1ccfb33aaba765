"""`wsn report`: pictures of a checkpoint's history, with a report.md tying them together and the
accuracy matrix as CSV. Everything comes from the file as recorded (no data, no torch); matplotlib
is an optional extra (`pip install 'wsn[plot]'`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsncli.engine.store.paths import file_prefix, plan_output, write_output
from wsncli.engine.store.reader import read_checkpoint_file
from wsncli.engine.usecases.inspect import CheckpointDescription, describe_checkpoint
from wsncli.errors import WsnError

FILES = (
    "report.md",
    "accuracy_matrix.csv",
    "accuracy_matrix.png",
    "accuracy_over_time.png",
    "capacity_per_layer.png",
    "mask_density_and_reuse.png",
)


class PlotError(WsnError):
    """matplotlib is missing or failed."""


@dataclass(frozen=True)
class ReportFile:
    name: str
    data: bytes


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("wsn report needs matplotlib: pip install 'wsn[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def recorded_matrix(desc: CheckpointDescription) -> tuple[list[int], np.ndarray]:
    """(tasks in learning order, R) with R[i, j] the accuracy of task j after learning task i (NaN: none)."""
    tasks = [s.record.task for s in desc.tasks]
    r = np.full((len(tasks), len(tasks)), np.nan)
    for i, s in enumerate(desc.tasks):
        for j, value in enumerate(s.record.accuracy_row[:i]):
            r[i, j] = np.nan if value is None else value
        r[i, i] = s.record.accuracy
    return tasks, r


def _png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _matrix_plot(plt, tasks, r) -> bytes:
    n = len(tasks)
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * n, 1.2 + 0.6 * n))
    shown = np.ma.masked_invalid(100 * r)
    image = ax.imshow(shown, cmap="viridis", vmin=max(0.0, float(np.nanmin(100 * r)) - 5) if n else 0, vmax=100)
    for i in range(n):
        for j in range(n):
            if np.isfinite(r[i, j]):
                ax.text(
                    j,
                    i,
                    f"{100 * r[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if r[i, j] < np.nanmean(r) else "black",
                )
    ax.set_xticks(range(n), [f"task {t}" for t in tasks], rotation=45, ha="right")
    ax.set_yticks(range(n), [f"after task {t}" for t in tasks])
    ax.set_xlabel("task measured")
    ax.set_title("Accuracy matrix (%): row = after learning that task")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    return _png(fig, plt)


def _over_time_plot(plt, tasks, r) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(tasks) + 1)
    markers = "osD^vP*Xhp"
    for j, t in enumerate(tasks):  # earlier tasks drawn wider, so identical lines stay visible beneath
        width = 1.5 + 4.5 * (len(tasks) - 1 - j) / max(1, len(tasks) - 1)  # 6 down to 1.5
        ax.plot(steps[j:], 100 * r[j:, j], marker=markers[j % len(markers)], linewidth=width, label=f"task {t}")
    ax.set_xticks(steps, [f"{i}\n(task {t})" for i, t in zip(steps, tasks)])
    ax.set_xlabel("tasks learned so far")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(over_time_title(tasks, r))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, len(tasks) // 10), loc="best")
    return _png(fig, plt)


def over_time_title(tasks, r) -> str:
    """What the accuracy-over-time plot shows: flat, or the largest fall (or rise) of an earlier task
    between the row where it was learned and the last row."""
    base = "Each task's accuracy across the sequence"
    moves = [
        (float(r[-1, j] - r[j, j]), tasks[j], float(r[j, j]), float(r[-1, j]))
        for j in range(len(tasks) - 1)
        if np.isfinite(r[-1, j]) and np.isfinite(r[j, j])
    ]
    if not moves:
        return base
    if all(move == 0 for move, *_ in moves):
        return f"{base}: flat, nothing forgotten"
    move, task, then, now = min(moves) if min(moves)[0] < 0 else max(moves)
    fell = sum(m < 0 for m, *_ in moves)
    others = f" ({fell - 1} more fell)" if fell > 1 else ""
    return f"{base}: task {task} {'fell' if move < 0 else 'rose'} from {100 * then:.1f}% to {100 * now:.1f}%{others}"


MAX_LAYER_LINES = 8  # more layers than this are drawn as groups (resnet18: its stem and four stages)


def layer_groups(layers) -> list[tuple[str, list]]:
    """(label, layers) per line of the capacity plot: each layer, or for deep nets the layers under
    each top-level module (`layer2.0.conv1` -> `layer2`), in forward order."""
    if len(layers) <= MAX_LAYER_LINES:
        return [(layer.name, [layer]) for layer in layers]
    groups: dict[str, list] = {}
    for layer in layers:
        groups.setdefault(layer.name.split(".")[0], []).append(layer)
    return [
        (f"{name} ({len(members)} layers)" if len(members) > 1 else name, members) for name, members in groups.items()
    ]


def _capacity_plot(plt, desc: CheckpointDescription) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4))
    tasks = [s.record.task for s in desc.tasks if s.mask_density is not None]
    steps = np.arange(1, len(tasks) + 1)
    colours, markers = plt.get_cmap("tab10").colors, "osD^vP*X"
    for i, (label, members) in enumerate(layer_groups(desc.layers)):
        weights = sum(l.weights for l in members)
        used = [100 * sum(after[l.name] * l.weights for l in members) / weights for after in desc.capacity_after]
        ax.plot(steps, used, marker=markers[i % len(markers)], color=colours[i % len(colours)], label=label)
    total = [
        100 * sum(after[l.name] * l.weights for l in desc.layers) / sum(l.weights for l in desc.layers)
        for after in desc.capacity_after
    ]
    ax.plot(steps, total, color="black", linewidth=2.5, label="all layers")
    ax.set_xticks(steps, [f"{i}\n(task {t})" for i, t in zip(steps, tasks)])
    ax.set_ylim(0, 100)
    ax.set_xlabel("tasks learned so far")
    ax.set_ylabel("weights used by any task (%)")
    ax.set_title("Capacity used per layer after each task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the plot
    return _png(fig, plt)


def _density_plot(plt, desc: CheckpointDescription) -> bytes:
    rows = [s for s in desc.tasks if s.mask_density is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    density = [100 * s.mask_density for s in rows]
    reused = [100 * s.mask_density * s.reuse_of_earlier for s in rows]
    ax.bar(x, reused, color="#3182bd", label="reused: weights earlier tasks already use")
    ax.bar(x, np.subtract(density, reused), bottom=reused, color="#9ecae1", label="new: weights no earlier task used")
    ax.set_xticks(x, [f"task {s.record.task}" for s in rows])
    ax.set_ylim(0, max(density, default=1) * 1.15)
    ax.set_ylabel("% of the network's masked weights")
    ax.set_title("Each task's mask (its density): reused and new weights")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig, plt)


def _csv(tasks, r) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["after_task"] + [f"task_{t}" for t in tasks])
    for t, row in zip(tasks, r):
        writer.writerow([t] + ["" if not np.isfinite(v) else f"{v:.6f}" for v in row])
    return out.getvalue().encode()


def _markdown(desc: CheckpointDescription, tasks, r, pictures: list[str]) -> bytes:
    meta = desc.file.meta
    final = [r[-1, j] for j in range(len(tasks))] if tasks else []
    acc = np.nanmean(final) if tasks else float("nan")
    forgetting = [r[-1, j] - r[j, j] for j in range(len(tasks) - 1) if np.isfinite(r[-1, j])]
    lines = [
        f"# wsn report: {Path(desc.path).name}",
        "",
        f"Benchmark `{meta.benchmark}`, network `{meta.model.arch}` {'x'.join(map(str, meta.model.input_shape))}, "
        f"method `{meta.method}`, {len(tasks)} task(s) learned in the order {', '.join(map(str, tasks)) or '-'}.",
        "",
        "Every number here was measured when a task was learned (each `train-task` re-measures every earlier "
        "task). Run `wsn eval` to re-measure them all now and prove that nothing changed.",
        "",
        f"- ACC after the last task: {100 * acc:.2f}%" if tasks else "- no task learned yet",
        f"- BWT (mean change of earlier tasks): {100 * np.mean(forgetting):+.2f} points"
        if forgetting
        else "- BWT: n/a",
        f"- weights used by any task: {100 * desc.capacity_used:.2f}%"
        if desc.capacity_used is not None
        else "- weights used: all (dense baseline)",
        "",
    ]
    lines += [
        "## Accuracy matrix (%)",
        "",
        "| after \\ task | " + " | ".join(map(str, tasks)) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for t, row in zip(tasks, r):
        lines.append(f"| {t} | " + " | ".join("" if not np.isfinite(v) else f"{100 * v:.2f}" for v in row) + " |")
    captions = {
        "accuracy_matrix.png": "The accuracy matrix as a heat map.",
        "accuracy_over_time.png": "Each task's accuracy after every later task.",
        "capacity_per_layer.png": "Share of each layer's weights used by any task so far.",
        "mask_density_and_reuse.png": "Each task's mask: its size and how much of it earlier tasks already used.",
    }
    for name in pictures:
        lines += ["", f"## {captions[name]}", "", f"![{captions[name]}]({name})"]
    lines += ["", "The matrix as numbers: [accuracy_matrix.csv](accuracy_matrix.csv)", ""]
    return "\n".join(lines).encode()


def build_report(desc: CheckpointDescription, on_file: Callable[[str], None] | None = None) -> list[ReportFile]:
    """Every file of the report, in FILES order."""
    plt = _pyplot()
    tasks, r = recorded_matrix(desc)
    files, pictures = [], []
    makers = [
        ("accuracy_matrix.png", lambda: _matrix_plot(plt, tasks, r)),
        ("accuracy_over_time.png", lambda: _over_time_plot(plt, tasks, r)),
    ]
    if desc.capacity_used is not None:
        makers += [
            ("capacity_per_layer.png", lambda: _capacity_plot(plt, desc)),
            ("mask_density_and_reuse.png", lambda: _density_plot(plt, desc)),
        ]
    for name, make in makers if tasks else []:
        if on_file:
            on_file(name)
        try:
            files.append(ReportFile(name, make()))
        except Exception as exc:  # noqa: BLE001 - a plotting failure is one line, not a traceback
            raise PlotError(f"cannot draw {name} ({type(exc).__name__}: {exc})") from None
        pictures.append(name)
    files.insert(0, ReportFile("accuracy_matrix.csv", _csv(tasks, r)))
    files.insert(0, ReportFile("report.md", _markdown(desc, tasks, r, pictures)))
    return files


_MAGIC = {".png": b"\x89PNG", ".csv": b"after_task", ".md": b"# wsn report"}


def report_folder(
    ckpt: Path, output: Path, force: bool = False, on_file: Callable[[str], None] | None = None
) -> list[str]:
    """`wsn report` in one call: check the folder and plan every file (refused before any work), draw,
    write; returns the paths written. A folder it made stays only if something was written into it."""
    if output.exists() and not output.is_dir():
        raise PlotError(f"{output} exists and is not a folder")
    parent = output.absolute().parent
    if not output.exists() and not parent.is_dir():  # like every file wsn writes: no folders made above it
        raise PlotError(f"{output}: cannot write: folder {parent} does not exist")
    found = read_checkpoint_file(ckpt)
    targets = {
        name: plan_output(
            output / name,
            what=f"wsn report {Path(name).suffix} file",
            inputs=[ckpt],
            force=force,
            is_own_kind=lambda p, s=Path(name).suffix: file_prefix(p, 16).startswith(_MAGIC[s]),
        )
        for name in FILES
        if (output / name).exists()
    }
    files = build_report(describe_checkpoint(found, ckpt), on_file)
    made = not output.exists()
    output.mkdir(exist_ok=True)  # the report's own folder (its parent exists)
    try:
        for f in files:
            write_output(targets.get(f.name) or plan_output(output / f.name, what="report file", inputs=[ckpt]), f.data)
    except WsnError:
        if made:
            _remove_if_empty(output)  # a full disk leaves no empty folder behind
        raise
    return [str(output / f.name) for f in files]


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only if empty: a file something else put there stays
    except OSError:
        pass
