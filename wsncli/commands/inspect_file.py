"""`wsn inspect`: what a checkpoint or a `.wsnm` packed-mask file holds (no torch for either)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from wsncli.commands.console import handle_errors, pct, print_json, stdout, warn


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def checkpoint_doc(d):
    from wsncli.commands.schemas import InspectCheckpointDoc, InspectLayer, InspectTask, schema_id
    from wsncli.engine.store.container import FORMAT_NAME

    meta = d.file.meta
    tasks = []
    for s in d.tasks:
        r = s.record
        tasks.append(
            InspectTask(
                task=r.task,
                order=r.order,
                n_classes=r.n_classes,
                classes=list(r.classes),
                accuracy_at_learning=r.accuracy,
                capacity=r.capacity,
                epochs=r.epochs,
                batch_size=r.batch_size,
                lr=r.lr,
                seed=r.seed,
                method=r.method,
                device=r.device,
                best_epoch=r.best_epoch,
                train_seconds=r.train_seconds,
                learned_at=r.learned_at,
                standardized=bool(r.preprocess and r.preprocess.standardized),
                mask_density=s.mask_density,
                reuse_of_earlier=s.reuse_of_earlier,
                new_weights=s.new_weights,
                layers={n: {"density": v[0], "reused": float(v[1])} for n, v in s.layers.items()},
            )
        )
    layers = [
        InspectLayer(
            layer=l.name,
            shape=list(l.shape),
            weights=l.weights,
            used=l.used,
            free=l.free,
            used_fraction=l.used / l.weights,
        )
        for l in d.layers
    ]
    model = {
        "arch": meta.model.arch,
        "input_shape": list(meta.model.input_shape),
        "hidden": list(meta.model.hidden),
        "width": meta.model.width,
        "bias": meta.model.bias,
    }
    return InspectCheckpointDoc(
        schema=schema_id("inspect"),
        checkpoint=d.path,
        format=FORMAT_NAME,
        version=d.version,
        benchmark=meta.benchmark,
        model=model,
        method=meta.method,
        seed=meta.seed,
        wsn_version=meta.wsn_version,
        signature=d.file.signature,
        task_ids=[r.task for r in meta.tasks],
        capacity_used=d.capacity_used,
        mask_codec=d.file.mask_codec,
        tasks=tasks,
        layers=layers,
        size=d.size,
        tampered=list(d.file.tampered)
        + [f"task {t}: its record fails its record digest" for t in d.file.damaged_records],
    )


def classes_text(classes: list, most: int = 6) -> str:
    """A task's labels, the first `most` of them and how many more: '3, 7' or '0, 1, 2, 3, 4, 5, … (+94)'."""
    shown = ", ".join(str(c) for c in classes[:most])
    return shown + (f", … (+{len(classes) - most})" if len(classes) > most else "")


def _render_checkpoint(doc) -> None:
    m = doc.model
    shape = "x".join(map(str, m["input_shape"]))
    net = f"{m['arch']} {shape}" + (f" hidden {'-'.join(map(str, m['hidden']))}" if m["arch"] == "mlp" else "")
    net += " with per-task biases" if m.get("bias") else ""
    stdout.print(
        f"[bold]{doc.checkpoint}[/]: {doc.format} v{doc.version}, benchmark {doc.benchmark}, {net}, method "
        f"{doc.method}, "
        f"seed {doc.seed}, signature {doc.signature}"
    )
    tasks = Table(title=f"tasks in learning order ({len(doc.tasks)})", title_justify="left")
    for col in (
        "order",
        "task",
        "classes",
        "capacity",
        "epochs",
        "batch",
        "lr",
        "acc at learning",
        "mask density",
        "reuse of earlier",
        "new weights",
    ):
        tasks.add_column(col, justify="right")
    for t in doc.tasks:
        tasks.add_row(
            str(t.order),
            str(t.task),
            classes_text(t.classes),
            "-" if t.capacity is None else str(t.capacity),
            "-" if t.epochs is None else str(t.epochs),
            "-" if t.batch_size is None else str(t.batch_size),
            "-" if t.lr is None else f"{t.lr:g}",
            pct(t.accuracy_at_learning),
            pct(t.mask_density),
            pct(t.reuse_of_earlier),
            "-" if t.new_weights is None else str(t.new_weights),
        )
    stdout.print(tasks)
    used = "every weight (dense baseline)" if doc.capacity_used is None else pct(doc.capacity_used)
    layers = Table(title=f"capacity per layer (used by any task: {used})", title_justify="left")
    for col in ("layer", "shape", "weights", "used", "free", "used %"):
        layers.add_column(col, justify="right" if col != "layer" else "left")
    for l in doc.layers:
        layers.add_row(
            l.layer, "x".join(map(str, l.shape)), str(l.weights), str(l.used), str(l.free), pct(l.used_fraction)
        )
    stdout.print(layers)
    size = Table(title=f"checkpoint size (masks coded as {doc.mask_codec or '-'})", title_justify="left")
    size.add_column("part")
    size.add_column("bytes", justify="right")
    for key, value in doc.size.items():
        size.add_row(key.replace("_", " "), _kib(value))
    stdout.print(size)
    if doc.tampered:
        warn(f"{len(doc.tampered)} problem(s): {'; '.join(doc.tampered[:3])}")


def packed_doc(path: Path, d: dict):
    from wsncli.commands.schemas import InspectMasksDoc, schema_id

    keys = (
        "version",
        "codec",
        "task_ids",
        "weights",
        "bytes",
        "header_bytes",
        "payload_bytes",
        "bits_per_weight_per_task",
        "layers",
        "streams",
        "meta",
        "checksums_ok",
    )
    return InspectMasksDoc(schema=schema_id("inspect"), file=str(path), **{k: d[k] for k in keys})


def _render_packed(doc) -> None:
    stdout.print(
        f"[bold]{doc.file}[/]: .wsnm v{doc.version}, codec {doc.codec}, tasks {doc.task_ids}, "
        f"checksums {'ok' if doc.checksums_ok else 'FAILED'}"
    )
    stdout.print(
        f"  {doc.bytes} bytes ({doc.header_bytes} header, {doc.payload_bytes} coded masks): "
        f"{doc.bits_per_weight_per_task:.4f} bits per weight per task over {doc.weights} weights"
    )
    table = Table(title="layers", title_justify="left")
    for col in ("name", "shape", "weights"):
        table.add_column(col)
    for layer in doc.layers:
        table.add_row(str(layer["name"]), "x".join(map(str, layer["shape"])), str(layer["weights"]))
    stdout.print(table)


@handle_errors
def inspect_command(
    path: Annotated[Path, typer.Argument(help="A checkpoint or a packed-mask file (.wsnm).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Show what a checkpoint or a packed-mask file holds, and verify its checksums."""
    from wsncli.engine.usecases.inspect import inspect_file

    kind, description = inspect_file(path)
    if kind == "packed-masks":
        doc, render = packed_doc(path, description), _render_packed
    else:
        doc, render = checkpoint_doc(description), _render_checkpoint
    if json_out:
        print_json(doc)
    else:
        render(doc)
