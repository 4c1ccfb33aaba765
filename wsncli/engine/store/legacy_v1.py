"""Reading version-1 checkpoints (wsn 0.1): a `torch.save` ZIP holding only tensors and plain data.

Read-only: wsn writes version 3. The file is untrusted: the ZIP is checked first (stored entries
only, declared sizes within the file, CRCs), then unpickled with `torch.load(weights_only=True)`
(torch >= 2.10, past CVE-2025-32434 and CVE-2026-24747), then every container is checked to be plain
data, every tensor a dense contiguous CPU view of its own bytes, and the metadata is converted into the current schema
(which checks every field). The result has the same shape as a version-3 read.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile

import numpy as np

from wsncli.engine.limits import MAX_DEPTH, MAX_NODES, MAX_STR
from wsncli.engine.store.container import tensor_digest
from wsncli.engine.store.schema import CheckpointMeta, convert_meta
from wsncli.errors import CheckpointError

ZIP_MAGIC = b"PK\x03\x04"
_INT64 = 2**63


def _short(value) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def check_plain(obj, where: str = "meta") -> None:
    """obj holds only dict (str keys), list, str, int, float, bool and None: a tree (no shared or
    cyclic containers), at most MAX_DEPTH deep and MAX_NODES big, ints within 64 bits."""
    stack, seen, nodes = [(obj, where, 0)], set(), 0
    while stack:
        value, at, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise CheckpointError(f"{where} has more than {MAX_NODES} values")
        if value is None or isinstance(value, (bool, float)):
            continue
        if isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                raise CheckpointError(f"{at}: integer out of the 64-bit range")
            continue
        if isinstance(value, str):
            if len(value) > MAX_STR:
                raise CheckpointError(f"{at}: string of {len(value)} characters is too long")
            continue
        if not isinstance(value, (dict, list)):
            raise CheckpointError(f"{at}: {type(value).__name__} is not plain data")
        if depth >= MAX_DEPTH:
            raise CheckpointError(f"{at}: nested more than {MAX_DEPTH} levels")
        if id(value) in seen:
            raise CheckpointError(f"{at}: shared or circular reference")
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise CheckpointError(f"{at}: key {_short(key)} is not a string")
                stack.append((item, f"{at}.{key[:40]}", depth + 1))
        else:
            stack.extend((item, f"{at}[{i}]", depth + 1) for i, item in enumerate(value))


def _unpickle(raw: bytes) -> dict:
    import torch

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:  # declared sizes first: no zip bombs
            infos = zf.infolist()
            if any(info.compress_type != zipfile.ZIP_STORED for info in infos):
                raise CheckpointError("compressed ZIP entries (torch.save never writes them): not a wsn checkpoint")
            declared = sum(info.file_size for info in infos)
            if declared > len(raw):
                raise CheckpointError(f"ZIP entries declare {declared} bytes, more than the file's {len(raw)}")
            bad = zf.testzip()
        if bad is not None:
            raise CheckpointError(f"record {bad[:80]!r} fails its CRC (file corrupt)")
        with warnings.catch_warnings():  # hostile pickles make torch warn; the error line says it all
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/zip raise many types for hostile bytes; all mean the same
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"unreadable or corrupt checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"not a wsn checkpoint (top level is {type(payload).__name__})")
    return payload


def _check_tensors(tensors, file_bytes: int) -> dict[str, np.ndarray]:
    import torch

    if not isinstance(tensors, dict):
        raise CheckpointError("malformed checkpoint (tensors missing)")
    total, out = 0, {}
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(f"tensor name {_short(name)} is not a string")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensor {name[:80]!r} is a {type(t).__name__}, not a tensor")
        if (
            t.layout != torch.strided
            or t.is_quantized
            or t.is_nested
            or t.device.type != "cpu"
            or t.dtype not in (torch.float32, torch.int64, torch.uint8)
        ):
            raise CheckpointError(
                f"tensor {name[:80]!r} is {t.dtype} {t.layout} on {t.device}; only dense CPU float32, int64 and "
                "uint8 are allowed"
            )
        nbytes = t.numel() * t.element_size()
        if not t.is_contiguous() or nbytes > t.untyped_storage().nbytes() - t.storage_offset() * t.element_size():
            raise CheckpointError(f"tensor {name[:80]!r} is not a contiguous view of its own data")
        total += nbytes
        if total > file_bytes:
            raise CheckpointError(f"tensors add up to more bytes than the file holds ({file_bytes})")
        out[name] = t.numpy()
    return out


def _v1_to_v2(meta: dict) -> dict:
    """Version-1 metadata in the version-2 schema's terms (records marked as digest version 1)."""
    out = dict(meta)
    if not isinstance(meta.get("tasks", []), list):
        return out  # the schema refuses it (dropping it would load the file as if no task were learned)
    tasks = []
    for record in meta.get("tasks", []):
        if isinstance(record, dict):
            record = {**record, "digest_version": 1}
            if meta.get("method") == "finetune":
                record["capacity"] = None  # 0.1 recorded a capacity that means nothing for the dense baseline
        tasks.append(record)
    out["tasks"] = tasks
    return out


def read_v1(raw: bytes) -> tuple[CheckpointMeta, dict[str, np.ndarray], list[str]]:
    """(meta, arrays by version-1 name, names failing their checksum) of a version-1 file."""
    payload = _unpickle(raw)
    if payload.get("format") != "wsn-checkpoint":
        raise CheckpointError(f"not a wsn checkpoint (format {_short(payload.get('format'))})")
    version = payload.get("version")
    if type(version) is not int or version != 1:
        raise CheckpointError(
            f"checkpoint format version {_short(version)} is not supported (this wsn reads versions 1, 2 and 3)"
        )
    meta, sums = payload.get("meta"), payload.get("checksums")
    if not isinstance(meta, dict) or not isinstance(sums, dict) or not isinstance(sums.get("tensors"), dict):
        raise CheckpointError("malformed checkpoint (meta or checksums missing)")
    check_plain(meta)  # before hashing: json.dumps would recurse, loop or expand shared lists
    canonical = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    if hashlib.sha256(canonical).hexdigest() != sums.get("meta"):
        raise CheckpointError("metadata fails its checksum (file corrupt)")
    arrays = _check_tensors(payload.get("tensors"), len(raw))
    table = sums["tensors"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise CheckpointError("malformed checkpoint (checksum entries are not string pairs)")
    missing = sorted(set(arrays) - set(table))
    if missing:
        raise CheckpointError(f"tensor {missing[0][:80]!r} has no checksum")
    tampered = sorted(name for name in arrays if tensor_digest(arrays[name], legacy_v1=True) != table[name])
    bad_masks = [n for n in tampered if n.startswith("mask/")]
    if bad_masks:
        raise CheckpointError(f"mask tensor {bad_masks[0][:80]!r} fails its checksum (file corrupt)")
    return convert_meta(_v1_to_v2(meta)), arrays, tampered
