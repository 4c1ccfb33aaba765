"""`wsn unpack-masks`: a `.wsnm` file back into per-task, per-layer masks (and a check against a checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wsncli.commands.console import handle_errors, not_stdout, print_json, stdout


@handle_errors
def unpack_masks_command(
    packed: Annotated[Path, typer.Argument(help="A .wsnm file.")],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", callback=not_stdout, help="Write the masks as .npz (keys task<T>/<layer>, bool arrays)."
        ),
    ] = None,
    ckpt: Annotated[
        Optional[Path], typer.Option("--ckpt", "-c", help="Check the masks bit for bit against this checkpoint.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file that is not an .npz.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as one JSON object.")] = False,
) -> None:
    """Decode a .wsnm file back into per-task, per-layer masks (and optionally check a checkpoint)."""
    from wsncli.commands.schemas import UnpackDoc, schema_id
    from wsncli.engine.usecases.pack import unpack_masks_file

    decoded = unpack_masks_file(packed, output, ckpt, force)
    if json_out:
        print_json(
            UnpackDoc(
                schema=schema_id("unpack-masks"),
                file=str(packed),
                codec=decoded.codec,
                task_ids=list(decoded.task_ids),
                layers=[l.name for l in decoded.layers],
                checkpoint=None if ckpt is None else str(ckpt),
                matches_checkpoint=True if ckpt is not None else None,
                output=None if output is None else str(output),
            )
        )
        return
    stdout.print(
        f"{packed}: {len(decoded.task_ids)} tasks ({', '.join(map(str, decoded.task_ids))}), "
        f"{len(decoded.layers)} layers, "
        f"codec {decoded.codec}; decoded"
    )
    if ckpt is not None:
        stdout.print(f"identical bit for bit to the masks in {ckpt}")
    if output is not None:
        stdout.print(f"wrote {output}")
