"""`wsn pack-masks`: every task's mask from a checkpoint into a `.wsnm` file, with a storage report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from wsncli.commands.console import handle_errors, print_json, standard_output, stderr, stdout
from wsncli.engine.limits import PACK_CODECS

_ROWS = [
    ("float32", "float32 masks"),
    ("bool", "bool bytes"),
    ("packbits", "packbits"),
    ("ascii7", "7-bit ASCII bytes"),
    ("ascii7_huffman", "7-bit ASCII + Huffman (article)"),
    ("paper_huffman", "7 tasks/weight + Huffman (paper)"),
]


def _render(report: dict, console: Console) -> None:
    table = Table(title=f"mask storage: {report['tasks']} tasks x {report['weights']} weights", title_justify="left")
    table.add_column("encoding")
    table.add_column("bits / weight / task", justify="right")
    for key, label in _ROWS:
        table.add_row(label, f"{report['baselines'][key]:.4f}")
    chosen = report["codec"] + (" (chosen by auto)" if report.get("requested_codec") == "auto" else "")
    table.add_row(f"[bold]{chosen}, this file[/]", f"[bold]{report['bits_per_weight_per_task']:.4f}[/]")
    table.add_row("bound: each mask alone (entropy)", f"{report['bounds']['independent']:.4f}")
    table.add_row("bound: given earlier masks (3 contexts)", f"{report['bounds']['conditional']:.4f}")
    console.print(table)
    for key, title in (("per_task", "task"), ("per_layer", "layer")):
        rows = Table(title=f"per {title}", title_justify="left")
        for col in (title, "density", report["codec"], "paper Huffman", "entropy alone", "given earlier masks"):
            rows.add_column(col, justify="right")
        for row in report.get(key, []):
            rows.add_row(
                str(row[title]),
                f"{row['density']:.3f}",
                f"{row['bits_per_weight_per_task']:.4f}",
                f"{row['baselines']['paper_huffman']:.4f}",
                f"{row['bounds']['independent']:.4f}",
                f"{row['bounds']['conditional']:.4f}",
            )
        console.print(rows)
    console.print(
        f"{report['bytes']} bytes, {versus_packbits(report['saving_vs_packbits'])}; decoded and verified bit for bit"
    )


def versus_packbits(saving: float) -> str:
    """0.25 -> '25.0% smaller than packbits'; -0.194 -> '19.4% larger than packbits'."""
    if round(100 * saving, 1) == 0:
        return "as large as packbits"
    return f"{abs(100 * saving):.1f}% {'smaller' if saving > 0 else 'larger'} than packbits"


@handle_errors
def pack_masks_command(
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint whose task masks to pack.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Output .wsnm file, or - for stdout (the report then goes to stderr).")
    ],
    codec: Annotated[Literal[PACK_CODECS], typer.Option(help="auto picks the smallest.")] = "auto",
    force: Annotated[bool, typer.Option(help="Overwrite an existing file that is not a .wsnm file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the storage report as one JSON object.")] = False,
) -> None:
    """Pack every task's mask into a .wsnm file, verify it decodes bit for bit, report the savings."""
    from wsncli.commands.schemas import PackDoc, schema_id
    from wsncli.engine.usecases.pack import pack_file

    to_stdout = output == "-"
    result = pack_file(ckpt, None if to_stdout else Path(output), codec, force)
    if to_stdout:
        standard_output.write_bytes(result.data)
    if json_out:
        doc = PackDoc(
            schema=schema_id("pack-masks"),
            checkpoint=str(ckpt),
            output=output,
            codec=result.codec,
            requested_codec=codec,
            bytes=len(result.data),
            report=result.report,
        )
        if to_stdout:
            import msgspec

            sys.stderr.write(msgspec.json.encode(doc).decode() + "\n")
        else:
            print_json(doc)
    else:
        _render(result.report, stderr if to_stdout else stdout)
