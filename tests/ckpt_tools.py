"""Reading and rewriting version-2 checkpoint files in tests, as an editor of the file would: parts
changed, then every checksum recomputed (so the checks past the checksums are what is exercised)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import safetensors.numpy

from wsncli.engine.store.container import tensor_digest


def read_parts(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(the header's metadata strings, every tensor) of a safetensors file."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    return dict(header["__metadata__"]), dict(safetensors.numpy.load(raw))


def write_parts(path: Path, metadata: dict[str, str], arrays: dict[str, np.ndarray], recompute: bool = True) -> None:
    """Write a safetensors file; with `recompute`, the meta and tensor checksums are made valid again."""
    metadata = dict(metadata)
    if recompute:
        if "meta" in metadata:
            metadata["meta_sha256"] = hashlib.sha256(metadata["meta"].encode()).hexdigest()
        metadata["checksums"] = json.dumps(
            {k: tensor_digest(v) for k, v in arrays.items()}, sort_keys=True, separators=(",", ":")
        )
    Path(path).write_bytes(safetensors.numpy.save(arrays, metadata=metadata))


def edit_meta(path: Path, change, recompute: bool = True, restamp: bool = False) -> None:
    """Apply `change(meta_dict)` to a checkpoint's metadata JSON and write it back; `restamp`: the
    records' record digests recomputed too (an editor who knows docs/CHECKPOINT.md section 6)."""
    from tests.reliability.spec_reader import record_digest

    metadata, arrays = read_parts(path)
    meta = json.loads(metadata["meta"])
    change(meta)
    if restamp:
        for record in meta["tasks"]:
            if record.get("record_digest") is not None:
                record["record_digest"] = record_digest(meta, record)
    metadata["meta"] = json.dumps(meta)
    write_parts(path, metadata, arrays, recompute)


def edit_arrays(path: Path, change, recompute: bool = True) -> None:
    """Apply `change(arrays_dict)` (arrays are writable copies) and write the file back."""
    metadata, arrays = read_parts(path)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    change(arrays)
    write_parts(path, metadata, arrays, recompute)
