"""Reading `.wsnm` packed-mask files: what kind of file a path holds, and decoding it with the size
limit ($WSN_MAX_MASK_BITS) and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import formats
from formats.container import MAGIC
from wsncli.engine.limits import env_limit
from wsncli.engine.store.container import looks_like_container
from wsncli.engine.store.legacy_v1 import ZIP_MAGIC
from wsncli.engine.store.paths import read_regular_file
from wsncli.engine.store.reader import checkpoint_limit
from wsncli.errors import UsageError

MASK_BITS_ENV = "WSN_MAX_MASK_BITS"


def mask_bits_limit() -> int | None:
    """$WSN_MAX_MASK_BITS as an int, or None for the formats default."""
    return env_limit(MASK_BITS_ENV, None, "mask bits", UsageError)


def file_kind(data: bytes) -> str:
    """ "packed-masks", "checkpoint", "npz" or "other", from a file's first bytes."""
    if data[:4] == MAGIC[:4]:
        return "packed-masks"
    if looks_like_container(data[:16]):
        return "checkpoint"
    if data[:4] == ZIP_MAGIC:
        return "checkpoint" if b"data.pkl" in data[:4096] else "npz" if b".npy" in data[:4096] else "other"
    return "other"


def read_packed_file(path: Path, accept_checkpoints: bool = False) -> bytes:
    """The bytes of a .wsnm file (or, with accept_checkpoints, of a checkpoint), read once."""
    path = Path(path)
    what = "checkpoint or packed-mask file" if accept_checkpoints else "packed-mask file"
    data = read_regular_file(path, checkpoint_limit(), what, formats.FormatError)
    kind = file_kind(data)
    if kind == "packed-masks" or (accept_checkpoints and kind == "checkpoint"):
        return data
    what = {
        "checkpoint": "a wsn checkpoint, not a packed-mask file (pass it with --ckpt)",
        "npz": "an .npz of arrays (as unpack-masks writes), not a packed-mask file or checkpoint",
    }.get(
        kind,
        "neither a packed-mask file (.wsnm) nor a wsn checkpoint"
        if accept_checkpoints
        else "not a packed-mask file (.wsnm)",
    )
    raise formats.FormatError(f"{path}: {what}")


def unpack_file(path: Path) -> formats.PackedMasks:
    """Decode a .wsnm file; any failure is one FormatError naming the file."""
    data = read_packed_file(path)
    try:
        limit = mask_bits_limit()
        return formats.unpack(data, max_bits=limit) if limit else formats.unpack(data)
    except formats.FormatError as exc:
        raise formats.FormatError(f"{path}: {exc}") from None


def describe_file(path: Path, data: bytes) -> dict:
    try:
        limit = mask_bits_limit()
        return formats.describe(data, max_bits=limit) if limit else formats.describe(data)
    except formats.FormatError as exc:
        raise formats.FormatError(f"{path}: {exc}") from None
