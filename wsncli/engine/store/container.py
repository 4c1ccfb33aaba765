"""The version-2 checkpoint container: a safetensors file (numpy only, no torch, no code execution).

Byte layout (safetensors): 8 bytes N, a little-endian u64; N bytes of UTF-8 JSON header; the tensor
data. The header's `__metadata__` (str -> str) holds `format`, `version`, `meta` (JSON),
`meta_sha256`, `checksums` (JSON: tensor name -> sha256) and, when signed, `hmac`. Everything is
checked here before the safetensors library builds a single array: header size, JSON strictness,
each entry's dtype, shape and offsets (contiguous, in order, covering the data exactly).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from wsncli.errors import CheckpointError

FORMAT_NAME = "wsn-checkpoint"
FORMAT_VERSION = 2
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 1 << 20
KEY_ENV = "WSN_CHECKPOINT_KEY"
DTYPES = {"F32": np.float32, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


@dataclass
class RawCheckpoint:
    """A container's parts, checked but not yet interpreted: metadata strings and numpy arrays."""

    meta_json: bytes
    arrays: dict[str, np.ndarray]
    tampered: list[str]  # tensors whose checksum fails
    signature: str  # "unsigned", "verified" or "unverified" (signed, but no key to check it with)


def tensor_digest(arr: np.ndarray) -> str:
    """sha256 over the numpy dtype string, the shape as a list and the C-order bytes (as version 1)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{list(arr.shape)}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def signing_key() -> bytes | None:
    text = os.environ.get(KEY_ENV, "")
    return text.encode() if text else None


def _auth_message(format_name: str, version: int, fields: dict[str, str]) -> bytes:
    parts = [format_name, str(version)] + [
        f"{k}={hashlib.sha256(v.encode()).hexdigest()}" for k, v in sorted(fields.items())
    ]
    return "\n".join(parts).encode()


def encode_file(
    format_name: str, version: int, fields: dict[str, str], arrays: dict[str, np.ndarray], key: bytes | None = None
) -> bytes:
    """A safetensors file whose metadata holds `fields`, a checksum table and (with `key`) an HMAC."""
    import safetensors.numpy

    fields = {
        **fields,
        "checksums": json.dumps(
            {n: tensor_digest(a) for n, a in arrays.items()}, sort_keys=True, separators=(",", ":")
        ),
    }
    metadata = {"format": format_name, "version": str(version), **fields}
    if key is not None:
        metadata["hmac"] = hmac.new(key, _auth_message(format_name, version, fields), hashlib.sha256).hexdigest()
    raw = safetensors.numpy.save(
        {k: np.asarray(v, order="C") for k, v in arrays.items()}, metadata=metadata
    )  # keeps 0-d
    return _sorted_header(raw)


def _sorted_header(raw: bytes) -> bytes:
    """The same file with its header's keys sorted (the library's order varies between processes):
    the same checkpoint always has the same bytes. Offsets count from the data, so they stay valid."""
    (n,) = struct.unpack_from("<Q", raw)
    text = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def encode(meta_json: bytes, arrays: dict[str, np.ndarray], key: bytes | None = None) -> bytes:
    """The checkpoint's bytes for `meta_json` and `arrays` (signed with HMAC-SHA256 when `key`)."""
    fields = {"meta": meta_json.decode(), "meta_sha256": hashlib.sha256(meta_json).hexdigest()}
    return encode_file(FORMAT_NAME, FORMAT_VERSION, fields, arrays, key)


def looks_like_container(prefix: bytes) -> bool:
    """Whether bytes start like a safetensors file (u64 header length, then a JSON object)."""
    if len(prefix) < 9:
        return False
    (n,) = struct.unpack_from("<Q", prefix)
    return n >= 2 and prefix[8:9] == b"{"


def _strict_json(raw: bytes, what: str):
    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"duplicate key {k[:40]!r}")
            out[k] = v
        return out

    def no_constant(name):
        raise ValueError(f"{name} is not allowed")

    def finite(text):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:20]} is out of range")
        return value

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=no_constant, parse_float=finite)
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} is not valid UTF-8 ({exc.reason})") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{what} is not valid JSON ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        ) from None


def _check_entries(header: dict, data_bytes: int) -> None:
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    if len(entries) > MAX_TENSORS:
        raise CheckpointError(f"{len(entries)} tensors, over the limit of {MAX_TENSORS}")
    spans = []
    for name, entry in entries:
        short = name[:80]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"tensor {short!r}: entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CheckpointError(f"tensor {short!r}: dtype {str(dtype)[:10]!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 2**48 for d in shape):
            raise CheckpointError(f"tensor {short!r}: shape must be a list of at most 8 non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and 0 <= o for o in offsets):
            raise CheckpointError(f"tensor {short!r}: data_offsets must be two non-negative integers")
        nbytes = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(
                f"tensor {short!r}: {dtype} {shape} needs {nbytes} bytes, its offsets span {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], short))
    end = 0
    for start, stop, short in sorted(spans):
        if start != end:
            raise CheckpointError(
                f"tensor {short!r}: data starts at byte {start}, expected {end} (tensors must be back to back)"
            )
        end = stop
    if end != data_bytes:
        raise CheckpointError(f"the tensors describe {end} bytes of data, the file holds {data_bytes}")


def _metadata(header: dict, format_name: str, version: int, keys: set[str], what: str) -> dict[str, str]:
    md = header.get("__metadata__")
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise CheckpointError(f"not a {what} (no wsn metadata in the safetensors header)")
    if md.get("format") != format_name:
        raise CheckpointError(f"not a {what} (format {str(md.get('format'))[:40]!r})")
    if md.get("version") != str(version):
        raise CheckpointError(
            f"{what} format version {str(md.get('version'))[:20]!r} is not supported (this wsn reads version {version})"
        )
    missing = keys - md.keys()
    if missing:
        raise CheckpointError(f"malformed {what} (metadata lacks {', '.join(sorted(missing))})")
    unknown = md.keys() - keys - {"hmac"}
    if unknown:
        raise CheckpointError(f"malformed {what} (unknown metadata {', '.join(sorted(k[:20] for k in unknown))})")
    return md


def decode_file(
    raw: bytes, format_name: str, version: int, fields: set[str], what: str, require_signature: bool = True
) -> tuple[dict[str, str], dict[str, np.ndarray], list[str], str]:
    """(fields, arrays, tensors failing their checksum, signature status) of a file encode_file wrote."""
    import safetensors.numpy

    if len(raw) < 8:
        raise CheckpointError("truncated (no safetensors header)")
    (n,) = struct.unpack_from("<Q", raw)
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"header of {n} bytes is over the limit of {MAX_HEADER_BYTES}")
    if 8 + n > len(raw):
        raise CheckpointError(f"truncated: the header needs {8 + n} bytes, the file has {len(raw)}")
    header = _strict_json(raw[8 : 8 + n], "the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError("the safetensors header is not a JSON object")
    md = _metadata(header, format_name, version, fields | {"format", "version", "checksums"}, what)
    _check_entries(header, len(raw) - 8 - n)
    sums = _strict_json(md["checksums"].encode(), "the checksum table")
    names = {k for k in header if k != "__metadata__"}
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()) or set(sums) != names:
        raise CheckpointError(f"malformed {what} (the checksum table does not list exactly the file's tensors)")
    signed = {k: md[k] for k in fields | {"checksums"}}
    signature = _check_signature(md, format_name, version, signed, require_signature)
    try:
        arrays = safetensors.numpy.load(bytes(raw))
    except Exception as exc:  # noqa: BLE001 - checked above; the library's own refusal must still be one line
        raise CheckpointError(
            f"unreadable safetensors data ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
        ) from None
    tampered = sorted(name for name, arr in arrays.items() if tensor_digest(arr) != sums[name])
    return {k: md[k] for k in fields}, arrays, tampered, signature


def decode(raw: bytes, require_signature: bool = True) -> RawCheckpoint:
    """Check and split a version-2 checkpoint (see the module docstring); CheckpointError on any problem.

    With a key in $WSN_CHECKPOINT_KEY a signed file must verify, and an unsigned one is refused unless
    `require_signature` is False (train-task, which signs what it writes)."""
    fields, arrays, tampered, signature = decode_file(
        raw, FORMAT_NAME, FORMAT_VERSION, {"meta", "meta_sha256"}, "wsn checkpoint", require_signature
    )
    meta_json = fields["meta"].encode()
    if hashlib.sha256(meta_json).hexdigest() != fields["meta_sha256"]:
        raise CheckpointError("metadata fails its checksum (file corrupt)")
    return RawCheckpoint(meta_json, arrays, tampered, signature)


def _check_signature(md: dict[str, str], format_name: str, version: int, fields: dict[str, str], require: bool) -> str:
    key = signing_key()
    if "hmac" not in md:
        if key is not None and require:
            raise CheckpointError(f"is not signed, but {KEY_ENV} is set: refusing an unsigned file")
        return "unsigned"
    if key is None:
        return "unverified"
    expected = hmac.new(key, _auth_message(format_name, version, fields), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, md["hmac"]):
        raise CheckpointError(f"fails its HMAC signature: written without this {KEY_ENV}, or changed since")
    return "verified"
