"""`wsn inspect`: what a checkpoint or a `.wsnm` packed-mask file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import formats
from wsncli.commands.common import handle_errors, pct, print_json, stdout


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KiB"


def _render_checkpoint(d: dict) -> None:
    m = d["model"]
    stdout.print(f"[bold]{d['path']}[/]: {d['format']} v{d['version']}, benchmark {d['benchmark']}, "
                 f"{m['arch']} {m['input_shape']} hidden {m['hidden']}, method {d['method']}, seed {d['seed']}")
    tasks = Table(title=f"tasks in learning order ({len(d['tasks'])})", title_justify="left")
    for col in ("order", "task", "capacity", "epochs", "batch", "lr", "acc at learning", "mask density", "reuse of earlier", "new weights"):
        tasks.add_column(col, justify="right")
    for t in d["tasks"]:
        tasks.add_row(str(t["order"]), str(t["task"]), str(t["capacity"]), str(t["epochs"]), str(t["batch_size"]), str(t["lr"]),
                      pct(t["accuracy_at_learning"]), pct(t.get("mask_density")), pct(t.get("reuse_of_earlier")), str(t.get("new_weights", "-")))
    stdout.print(tasks)
    layers = Table(title=f"capacity per layer (used by any task: {pct(d['capacity_used'])})", title_justify="left")
    for col in ("layer", "shape", "weights", "used", "free", "used %"):
        layers.add_column(col, justify="right" if col != "layer" else "left")
    for l in d["layers"]:
        layers.add_row(l["layer"], "x".join(map(str, l["shape"])), str(l["weights"]), str(l["used"]), str(l["free"]), pct(l["used_fraction"]))
    stdout.print(layers)
    size = Table(title="checkpoint size", title_justify="left")
    size.add_column("part")
    size.add_column("bytes", justify="right")
    for key, value in d["size"].items():
        size.add_row(key.replace("_", " "), _kib(value))
    stdout.print(size)
    if d["tampered"]:
        stdout.print(f"[red]warning:[/] {len(d['tampered'])} tensor(s) fail their checksum: {', '.join(d['tampered'][:5])}")


def _render_packed(d: dict) -> None:
    stdout.print(f"[bold]{d.get('path')}[/]: .wsnm v{d.get('version')}, codec {d.get('codec')}, tasks {d.get('task_ids')}, "
                 f"checksums {'ok' if d.get('checksums_ok') else 'FAILED'}")
    for key, value in d.items():
        if key not in ("path", "version", "codec", "task_ids", "checksums_ok") and not isinstance(value, (list, dict)):
            stdout.print(f"  {key}: {value}")
    layers = d.get("layers") or []
    if layers and isinstance(layers[0], dict):
        table = Table(title="layers", title_justify="left")
        cols = [k for k in layers[0] if not isinstance(layers[0][k], (list, dict))]
        for col in cols:
            table.add_column(str(col))
        for layer in layers:
            table.add_row(*(str(layer.get(c)) for c in cols))
        stdout.print(table)


@handle_errors
def inspect_command(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pt) or a packed-mask file (.wsnm).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Show what a checkpoint or a packed-mask file holds, and verify its checksums."""
    from wsncli.engine.lifecycle.inspect import describe_checkpoint
    from wsncli.engine.lifecycle.pack import read_packed
    from wsncli.engine.store.checkpoint import load_checkpoint
    data = read_packed(path)
    if data[:4] == b"WSNM":
        described = {"path": str(path), **formats.describe(data)}
        render = _render_packed
    else:
        del data
        described = describe_checkpoint(load_checkpoint(path), path)
        render = _render_checkpoint
    if json_out:
        print_json(described)
    else:
        render(described)
