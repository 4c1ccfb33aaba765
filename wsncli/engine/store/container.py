"""wsn's safetensors containers (checkpoints and snapshots): numpy only, no torch, no code execution.

Byte layout (safetensors): 8 bytes N, a little-endian u64; N bytes of UTF-8 JSON header; the tensor
data. The header's `__metadata__` (str -> str) holds `format`, `version`, the format's own fields,
`checksums` (JSON: tensor name -> sha256) and, when signed, `hmac`. Reading is bounded by what the
header declares: the 8-byte length and the header are read and checked first (size, JSON
strictness, metadata, signature, each entry's dtype, shape and offsets: contiguous, in order,
covering the data exactly), then a format's own checks of its metadata (`check_header`), and only
then the data, once, into one buffer of exactly its declared size; arrays are views of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsncli.engine.store.paths import check_unchanged_size, open_regular_file, read_at
from wsncli.errors import CheckpointError

MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 1 << 20
KEY_ENV = "WSN_CHECKPOINT_KEY"
DTYPES = {"F32": np.dtype("<f4"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "U8": np.dtype("|u1")}
REQUIRE, ADOPT = "require", "adopt"  # signature policies: refuse what fails, or report it (train-task --adopt-unsigned)
FORMAT_NAME = "wsn-checkpoint"
FORMAT_VERSION = 3


@dataclass(frozen=True)
class Spec:
    """What one kind of container holds in `__metadata__` besides format, version, checksums and hmac."""

    name: str  # the `format` value
    version: int  # the version written
    readable: tuple[int, ...]  # the versions read
    fields: frozenset[str]
    what: str  # how messages name a file of this kind
    whole_sha256: bool = False  # a `sha256` of every field and checksum (the file's own checksum)
    unsigned_hint: str = ""  # what a refused unsigned or wrongly signed file can do


CHECKPOINT = Spec(
    FORMAT_NAME,
    FORMAT_VERSION,
    (2, 3),
    frozenset({"meta", "meta_sha256"}),
    "wsn checkpoint",
    unsigned_hint=" (train-task --adopt-unsigned re-verifies every task against its data, then signs it)",
)


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass
class Header:
    """A container's header, checked: its version, fields, tensor entries, checksums and signature."""

    version: int
    fields: dict[str, str]
    entries: dict[str, Entry]
    sums: dict[str, str]
    signature: str  # "unsigned", "verified", "unverified" (signed, no key) or "invalid" (policy ADOPT only)


@dataclass
class Decoded:
    header: Header
    arrays: dict[str, np.ndarray]
    tampered: list[str]  # tensors whose checksum fails
    checked: object = None  # what the format's check_header returned
    size: int = 0
    extra: dict = field(default_factory=dict)


def tensor_digest(arr: np.ndarray, legacy_v1: bool = False) -> str:
    """sha256 over the ASCII of f"{dtype.str}{list(shape)}" with the stored shape (`<i8[]` for a 0-d
    tensor), then the C-order bytes. `legacy_v1`: version-1 files hashed a 0-d tensor as shape [1]."""
    arr = np.asarray(arr)
    shape = list(arr.shape) if arr.ndim or not legacy_v1 else [1]
    h = hashlib.sha256(f"{arr.dtype.str}{shape}".encode())
    h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))  # no copy for a contiguous array
    return h.hexdigest()


def signing_key() -> bytes | None:
    text = os.environ.get(KEY_ENV, "")
    return text.encode() if text else None


def auth_message(format_name: str, version: int, fields: dict[str, str]) -> bytes:
    """What the HMAC (and a snapshot's sha256) covers: the format, the version, then
    `key=sha256(value)` for every field and `checksums`, keys sorted, joined by newlines."""
    parts = [format_name, str(version)] + [
        f"{k}={hashlib.sha256(v.encode()).hexdigest()}" for k, v in sorted(fields.items())
    ]
    return "\n".join(parts).encode()


def encode_file(spec: Spec, fields: dict[str, str], arrays: dict[str, np.ndarray], key: bytes | None = None) -> bytes:
    """A safetensors file whose metadata holds `fields`, a checksum table, (spec) a whole-file sha256
    and (with `key`) an HMAC. 0-d arrays stay 0-d (shape [])."""
    import safetensors.numpy

    fields = {
        **fields,
        "checksums": json.dumps(
            {n: tensor_digest(a) for n, a in arrays.items()}, sort_keys=True, separators=(",", ":")
        ),
    }
    metadata = {"format": spec.name, "version": str(spec.version), **fields}
    message = auth_message(spec.name, spec.version, fields)
    if spec.whole_sha256:
        metadata["sha256"] = hashlib.sha256(message).hexdigest()
    if key is not None:
        metadata["hmac"] = hmac.new(key, message, hashlib.sha256).hexdigest()
    raw = safetensors.numpy.save({k: np.asarray(v, order="C") for k, v in arrays.items()}, metadata=metadata)
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
    return encode_file(CHECKPOINT, fields, arrays, key)


def looks_like_container(prefix: bytes) -> bool:
    """Whether bytes start like a safetensors file (u64 header length, then a JSON object)."""
    if len(prefix) < 9:
        return False
    (n,) = struct.unpack_from("<Q", prefix)
    return n >= 2 and prefix[8:9] == b"{"


def strict_json(raw: bytes, what: str):
    """JSON with no duplicate keys, no NaN/Infinity and no number beyond a finite float."""

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
        return json.loads(
            bytes(raw).decode("utf-8"), object_pairs_hook=pairs, parse_constant=no_constant, parse_float=finite
        )
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} is not valid UTF-8 ({exc.reason})") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{what} is not valid JSON ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        ) from None


def _entries(header: dict, data_bytes: int) -> dict[str, Entry]:
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    if len(entries) > MAX_TENSORS:
        raise CheckpointError(f"{len(entries)} tensors, over the limit of {MAX_TENSORS}")
    out = {}
    for name, entry in entries:
        short = name[:80]
        _unicode(name, f"tensor name {short!r}")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"tensor {short!r}: entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise CheckpointError(f"tensor {short!r}: dtype {str(dtype)[:10]!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(type(d) is int and 0 <= d < 2**48 for d in shape):
            raise CheckpointError(f"tensor {short!r}: shape must be a list of at most 8 non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int and 0 <= o for o in offsets):
            raise CheckpointError(f"tensor {short!r}: data_offsets must be two non-negative integers")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise CheckpointError(
                f"tensor {short!r}: {dtype} {shape} needs {nbytes} bytes, its offsets span {offsets[1] - offsets[0]}"
            )
        out[name] = Entry(dtype, tuple(shape), offsets[0], offsets[1])
    end = 0
    for name, entry in sorted(out.items(), key=lambda item: (item[1].begin, item[1].end, item[0][:80])):
        if entry.begin != end:
            raise CheckpointError(
                f"tensor {name[:80]!r}: data starts at byte {entry.begin}, expected {end} "
                "(tensors must be back to back)"
            )
        end = entry.end
    if end != data_bytes:
        raise CheckpointError(f"the tensors describe {end} bytes of data, the file holds {data_bytes}")
    return out


def _unicode(text: str, what: str) -> None:
    """A JSON string may escape half a surrogate pair (`\\ud800`): no UTF-8 text can hold it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{what} holds a lone surrogate (not valid Unicode)") from None


def _metadata(header: dict, spec: Spec) -> tuple[int, dict[str, str]]:
    what = spec.what
    md = header.get("__metadata__")
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise CheckpointError(f"not a {what} (no wsn metadata in the safetensors header)")
    for key, value in md.items():
        _unicode(key + value, f"the metadata's {key[:20]!r}")
    if md.get("format") != spec.name:
        raise CheckpointError(f"not a {what} (format {str(md.get('format'))[:40]!r})")
    versions = {str(v): v for v in spec.readable}
    if md.get("version") not in versions:
        reads = " and ".join(map(str, spec.readable))
        raise CheckpointError(
            f"{what} format version {str(md.get('version'))[:20]!r} is not supported (this wsn reads version {reads})"
        )
    keys = spec.fields | {"format", "version", "checksums"} | ({"sha256"} if spec.whole_sha256 else set())
    missing = keys - md.keys()
    if missing:
        raise CheckpointError(f"malformed {what} (metadata lacks {', '.join(sorted(missing))})")
    unknown = md.keys() - keys - {"hmac"}
    if unknown:
        raise CheckpointError(f"malformed {what} (unknown metadata {', '.join(sorted(k[:20] for k in unknown))})")
    return versions[md["version"]], md


def _parse_header(text: bytes, data_bytes: int, spec: Spec, policy: str) -> Header:
    header = strict_json(text, "the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError("the safetensors header is not a JSON object")
    version, md = _metadata(header, spec)
    entries = _entries(header, data_bytes)
    sums = strict_json(md["checksums"].encode(), "the checksum table")
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()) or set(sums) != set(entries):
        raise CheckpointError(f"malformed {spec.what} (the checksum table does not list exactly the file's tensors)")
    covered = {k: md[k] for k in spec.fields | {"checksums"}}
    message = auth_message(spec.name, version, covered)
    if spec.whole_sha256 and not hmac.compare_digest(hashlib.sha256(message).hexdigest(), md["sha256"]):
        raise CheckpointError(f"its metadata fails its checksum ({spec.what} corrupt)")
    signature = _check_signature(md, message, policy, spec)
    return Header(version, {k: md[k] for k in spec.fields}, entries, sums, signature)


def _check_signature(md: dict[str, str], message: bytes, policy: str, spec: Spec) -> str:
    key = signing_key()
    if "hmac" not in md:
        if key is not None and policy == REQUIRE:
            raise CheckpointError(f"is not signed, but {KEY_ENV} is set: refusing an unsigned file{spec.unsigned_hint}")
        return "unsigned"
    if key is None:
        return "unverified"
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected, md["hmac"]):
        return "verified"
    if policy == REQUIRE:
        raise CheckpointError(
            f"fails its HMAC signature: written without this {KEY_ENV}, or changed since{spec.unsigned_hint}"
        )
    return "invalid"


def _arrays(buf, entries: dict[str, Entry]) -> dict[str, np.ndarray]:
    """numpy views of `buf` (a copy only where an entry is not aligned to its item size)."""
    out = {}
    for name, e in entries.items():
        dtype = DTYPES[e.dtype]
        count = math.prod(e.shape)
        if count == 0:
            out[name] = np.zeros(e.shape, dtype)
        elif e.begin % dtype.itemsize:
            out[name] = np.frombuffer(buf[e.begin : e.end], dtype).copy().reshape(e.shape)
        else:
            out[name] = np.frombuffer(buf, dtype, count, e.begin).reshape(e.shape)
    return out


def _decode(
    size: int,
    read: Callable[[int, int], bytes | bytearray | memoryview],
    spec: Spec,
    policy: str,
    check_header: Callable[[Header], object] | None,
) -> Decoded:
    if size < 8:
        raise CheckpointError("truncated (no safetensors header)")
    (n,) = struct.unpack_from("<Q", bytes(read(0, 8)))
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"header of {n} bytes is over the limit of {MAX_HEADER_BYTES}")
    if 8 + n > size:
        raise CheckpointError(f"truncated: the header needs {8 + n} bytes, the file has {size}")
    header = _parse_header(read(8, n), size - 8 - n, spec, policy)
    checked = check_header(header) if check_header is not None else None
    data = read(8 + n, size - 8 - n)  # the only read of the tensors: exactly what the header declared
    arrays = _arrays(data, header.entries)
    tampered = sorted(name for name, arr in arrays.items() if tensor_digest(arr) != header.sums[name])
    return Decoded(header, arrays, tampered, checked, size)


def decode_bytes(
    raw: bytes | bytearray, spec: Spec, policy: str = REQUIRE, check_header: Callable[[Header], object] | None = None
) -> Decoded:
    """A container held in memory (the arrays are views of `raw`)."""
    view = memoryview(raw)
    return _decode(len(raw), lambda offset, n: view[offset : offset + n], spec, policy, check_header)


def decode_path(
    path: Path,
    limit: int,
    spec: Spec,
    policy: str = REQUIRE,
    check_header: Callable[[Header], object] | None = None,
    limit_hint: str = "",
) -> Decoded:
    """A container file, read header first (at most `limit` bytes; memory: its size plus the header)."""
    path = Path(path)
    with open_regular_file(path, limit, spec.what.removeprefix("wsn "), CheckpointError, limit_hint) as (fd, size):
        return decode_fd(fd, size, path, spec, policy, check_header)


def decode_fd(
    fd: int,
    size: int,
    path: Path,
    spec: Spec,
    policy: str = REQUIRE,
    check_header: Callable[[Header], object] | None = None,
) -> Decoded:
    """decode_path of a file already opened (open_regular_file); every error names `path` once."""
    try:
        decoded = _decode(
            size, lambda offset, n: read_at(fd, offset, n, path, CheckpointError), spec, policy, check_header
        )
        check_unchanged_size(fd, size, path, CheckpointError)
    except CheckpointError as exc:
        text = str(exc)
        raise CheckpointError(text if text.startswith(f"{path}: ") else f"{path}: {text}") from None
    return decoded
