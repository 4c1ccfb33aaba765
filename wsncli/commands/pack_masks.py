"""`wsn pack-masks` and `wsn unpack-masks`: the checkpoint's masks to and from a `.wsnm` file."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

import formats
from wsncli.commands.common import handle_errors, print_json, stderr, stdout
from wsncli.errors import WsnError

_ROWS = [("float32", "float32 masks"), ("bool", "bool bytes"), ("packbits", "packbits"), ("ascii7", "7-bit ASCII bytes"),
         ("ascii7_huffman", "7-bit ASCII + Huffman (article)"), ("paper_huffman", "7 tasks/weight + Huffman (paper)")]


def _render(report: dict, console: Console) -> None:
    table = Table(title=f"mask storage: {report['tasks']} tasks x {report['weights']} weights", title_justify="left")
    table.add_column("encoding")
    table.add_column("bits / weight / task", justify="right")
    for key, label in _ROWS:
        table.add_row(label, f"{report['baselines'][key]:.4f}")
    table.add_row(f"[bold]{report['codec']} (this file)[/]", f"[bold]{report['bits_per_weight_per_task']:.4f}[/]")
    table.add_row("bound: each mask alone (entropy)", f"{report['bounds']['independent']:.4f}")
    table.add_row("bound: given earlier masks (3 contexts)", f"{report['bounds']['conditional']:.4f}")
    console.print(table)
    for key, title in (("per_task", "task"), ("per_layer", "layer")):
        rows = Table(title=f"per {title}", title_justify="left")
        for col in (title, "density", report["codec"], "paper Huffman", "entropy alone", "given earlier masks"):
            rows.add_column(col, justify="right")
        for row in report.get(key, []):
            rows.add_row(str(row[title]), f"{row['density']:.3f}", f"{row['bits_per_weight_per_task']:.4f}", f"{row['baselines']['paper_huffman']:.4f}",
                         f"{row['bounds']['independent']:.4f}", f"{row['bounds']['conditional']:.4f}")
        console.print(rows)
    console.print(f"{report['bytes']} bytes, {100 * report['saving_vs_packbits']:.1f}% smaller than packbits; decoded and verified bit for bit")


@handle_errors
def pack_masks_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint whose task masks to pack.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output .wsnm file, or - for stdout (the report then goes to stderr).")],
    codec: Annotated[str, typer.Option(help="context (default), ascii7, ascii7-huffman, paper-huffman or packbits.")] = "context",
    json_out: Annotated[bool, typer.Option("--json", help="Print the storage report as one JSON object.")] = False,
) -> None:
    """Pack every task's mask into a .wsnm file, verify it decodes bit for bit, report the savings."""
    from wsncli.engine.lifecycle.pack import pack_checkpoint_masks
    from wsncli.engine.store.atomic import atomic_write
    from wsncli.engine.store.checkpoint import load_checkpoint
    checkpoint = load_checkpoint(ckpt)
    result = pack_checkpoint_masks(checkpoint, codec, source=Path(ckpt).name)
    to_stdout = output == "-"
    if to_stdout:
        sys.stdout.buffer.write(result.data)
        sys.stdout.buffer.flush()
    else:
        atomic_write(Path(output), lambda f: f.write(result.data))
    console = stderr if to_stdout else stdout
    if json_out:
        if to_stdout:
            import json

            sys.stderr.write(json.dumps(result.report) + "\n")
        else:
            print_json(result.report)
    else:
        _render(result.report, console)


@handle_errors
def unpack_masks_command(
    packed: Annotated[Path, typer.Argument(help="A .wsnm file.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the masks as .npz (keys task<T>/<layer>, bool arrays of the layer's shape).")] = None,
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", "-c", help="Check the masks bit for bit against this checkpoint.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as one JSON object.")] = False,
) -> None:
    """Decode a .wsnm file back into per-task, per-layer masks (and optionally check a checkpoint)."""
    from wsncli.engine.lifecycle.pack import check_masks_equal, checkpoint_layer_masks, masks_to_arrays, read_packed
    from wsncli.engine.store.atomic import atomic_write
    from wsncli.engine.store.checkpoint import load_checkpoint
    decoded = formats.unpack(read_packed(packed))
    summary = {"file": str(packed), "codec": decoded.codec, "tasks": list(decoded.task_ids), "layers": [l.name for l in decoded.layers]}
    if ckpt is not None:
        checkpoint = load_checkpoint(ckpt)
        check_masks_equal(checkpoint_layer_masks(checkpoint), [t for t in checkpoint.learned() if t in checkpoint.masks], decoded)
        summary["matches_checkpoint"] = str(ckpt)
    if output is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **masks_to_arrays(decoded))
        atomic_write(output, lambda f: f.write(buffer.getvalue()), WsnError)
        summary["output"] = str(output)
    if json_out:
        print_json(summary)
        return
    stdout.print(f"{packed}: {len(decoded.task_ids)} tasks ({', '.join(map(str, decoded.task_ids))}), {len(decoded.layers)} layers, codec {decoded.codec}; decoded")
    if ckpt is not None:
        stdout.print(f"identical bit for bit to the masks in {ckpt}")
    if output is not None:
        stdout.print(f"wrote {output}")
