"""The `.wsnm` packed-mask file: magic, version, JSON header, coded streams, CRC32 trailer.

Byte regions in order (little-endian integers; docs/FORMAT.md is the specification):
  8 bytes magic | u16 version | u32 header length H | H bytes UTF-8 JSON header |
  the streams, back to back in stream-table order | u32 CRC32 of every byte before it
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from formats.codecs import AUTO, CODECS, PACK_CODECS, LayerDecoder, encode_layer, stream_groups
from formats.errors import FormatError
from formats.header import (
    DEFAULT_MAX_BITS,
    LIMIT_HINT,
    MAX_HEADER_BYTES,
    MAX_LAYER_WEIGHTS,
    MAX_LAYERS,
    MAX_TASKS,
    MAX_TOTAL_BITS,
    check_layout,
    check_meta,
    check_stream_table,
    layer_size,
    parse_header,
)

__all__ = [
    "DEFAULT_MAX_BITS",
    "MAX_HEADER_BYTES",
    "MAX_LAYERS",
    "MAX_LAYER_WEIGHTS",
    "MAX_TASKS",
    "MAX_TOTAL_BITS",
    "LayerMasks",
    "PackedMasks",
    "auto_codec",
    "describe",
    "pack",
    "unpack",
]

MAGIC = b"WSNM\x89\r\n\x1a"
VERSION = 1
PREFIX = struct.Struct("<8sHI")  # magic, version, header length
TRAILER = struct.Struct("<I")


@dataclass
class LayerMasks:
    """One layer's masks for all tasks, in learning order (flat bool arrays of size prod(shape))."""

    name: str
    shape: tuple[int, ...]
    masks: list[np.ndarray] = field(default_factory=list)


@dataclass
class PackedMasks:
    """What a .wsnm file holds."""

    version: int
    codec: str
    task_ids: list[int]
    layers: list[LayerMasks]
    meta: dict


@dataclass(frozen=True)
class StreamEntry:
    """Row i of the stream table: layer i % L, tasks of unit i // L, and where its bytes are."""

    index: int
    layer: int
    tasks: range
    offset: int
    length: int
    crc32: int


def _stream_label(header: dict, entry: StreamEntry) -> str:
    ids = [header["task_ids"][t] for t in entry.tasks]
    tasks = f"task {ids[0]}" if len(ids) == 1 else f"tasks {ids[0]}..{ids[-1]}"
    return f"stream {entry.index} (layer {header['layers'][entry.layer]['name']!r}, {tasks})"


def _stream_entries(header: dict) -> list[StreamEntry]:
    groups = stream_groups(header["codec"], len(header["task_ids"]))
    n_layers = len(header["layers"])
    table = header["streams"]
    return [
        StreamEntry(i, i % n_layers, groups[i // n_layers], table["offset"][i], table["length"][i], table["crc32"][i])
        for i in range(len(groups) * n_layers)
    ]


def _decode_limit(max_bits: int | None) -> int:
    if max_bits is None:
        return DEFAULT_MAX_BITS
    if not isinstance(max_bits, int) or isinstance(max_bits, bool) or max_bits < 0:
        raise ValueError(f"max_bits must be a non-negative integer or None, got {max_bits!r}")
    return max_bits


def _read(data: bytes, max_bits: int | None, limit_hint: str = LIMIT_HINT) -> tuple[dict, int, PackedMasks]:
    """Validate and fully decode; returns (header, byte offset of the stream region, content)."""
    limit = _decode_limit(max_bits)
    data = bytes(data)
    if data[:8] != MAGIC:
        if len(data) < 8 and MAGIC.startswith(data):
            raise FormatError(f"truncated: {len(data)} bytes, shorter than the 8-byte magic")
        raise FormatError(f"bad magic: expected {MAGIC!r}, got {data[:8]!r} (not a .wsnm file)")
    if len(data) < PREFIX.size:
        raise FormatError(f"truncated: {len(data)} bytes, the fixed prefix is {PREFIX.size}")
    _, version, header_len = PREFIX.unpack_from(data)
    if version != VERSION:
        raise FormatError(f"unsupported format version {version} (this reader knows version {VERSION})")
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"header length {header_len} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    start = PREFIX.size + header_len
    if len(data) < start + TRAILER.size:
        raise FormatError(
            f"truncated: {len(data)} bytes, the {header_len}-byte header and the trailer need {start + TRAILER.size}"
        )
    header = parse_header(data[PREFIX.size : start])
    check_layout(header, limit, limit_hint)
    check_stream_table(header)
    entries = _stream_entries(header)
    region = len(data) - start - TRAILER.size
    end = 0
    for e in entries:
        if e.offset + e.length > region:
            raise FormatError(
                f"{_stream_label(header, e)}: bytes {e.offset}..{e.offset + e.length} lie "
                f"outside the {region}-byte stream region (truncated file?)"
            )
        if e.offset != end:
            raise FormatError(
                f"{_stream_label(header, e)}: offset {e.offset}, expected {end} (streams are stored back to back)"
            )
        end += e.length
    if end != region:
        raise FormatError(f"trailing garbage: {region - end} bytes more than the header describes")
    (stored,) = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    computed = zlib.crc32(data[: len(data) - TRAILER.size])
    if stored != computed:
        raise FormatError(f"file CRC32 mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")
    chunks = []
    for e in entries:
        chunk = data[start + e.offset : start + e.offset + e.length]
        crc = zlib.crc32(chunk)
        if crc != e.crc32:
            raise FormatError(
                f"{_stream_label(header, e)}: CRC32 mismatch: stored 0x{e.crc32:08x}, computed 0x{crc:08x}"
            )
        chunks.append(chunk)
    return header, start, _decode_streams(header, entries, chunks)


def _decode_streams(header: dict, entries: list[StreamEntry], chunks: list[bytes]) -> PackedMasks:
    codec, task_ids = header["codec"], header["task_ids"]
    layers = [LayerMasks(d["name"], tuple(d["shape"]), []) for d in header["layers"]]
    decoders = [LayerDecoder(codec, layer_size(d["shape"])) for d in header["layers"]]
    for e, chunk in zip(entries, chunks):
        what = _stream_label(header, e)
        try:
            masks = decoders[e.layer].decode(chunk, len(e.tasks), what, [header["ones"][t][e.layer] for t in e.tasks])
        except FormatError:
            raise
        except MemoryError:
            raise FormatError(f"{what}: out of memory while decoding") from None
        except (ValueError, IndexError, TypeError, OverflowError, RecursionError) as exc:
            raise FormatError(f"{what}: malformed stream ({type(exc).__name__}: {exc})") from None
        for t, mask in zip(e.tasks, masks):
            found, stated = int(np.count_nonzero(mask)), header["ones"][t][e.layer]
            if found != stated:
                raise FormatError(f"{what}: task {task_ids[t]} decoded with {found} ones, the header says {stated}")
        layers[e.layer].masks.extend(masks)
    return PackedMasks(VERSION, codec, list(task_ids), layers, header.get("meta", {}))


def unpack(data: bytes, max_bits: int | None = None, limit_hint: str = LIMIT_HINT) -> PackedMasks:
    """Decode a .wsnm file; any malformed, corrupt, truncated or over-limit input raises FormatError.
    `limit_hint` ends the message of a file over `max_bits` (what the caller's user can do about it)."""
    return _read(data, max_bits, limit_hint)[2]


def _as_mask(mask, size: int, what: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != bool:
        if arr.dtype.kind not in "iu" or (arr.size and not np.isin(arr, (0, 1)).all()):
            raise FormatError(f"{what}: mask must be boolean (got dtype {arr.dtype})")
        arr = arr.astype(bool)
    if arr.size != size:
        raise FormatError(f"{what}: mask has {arr.size} elements, the layer shape needs {size}")
    return np.ascontiguousarray(arr.reshape(-1))


def normalized_masks(layers: list[LayerMasks], task_ids: list[int]) -> list[list[np.ndarray]]:
    """Each layer's masks as contiguous flat bool arrays, after checking counts and sizes."""
    out = []
    for layer in layers:
        if len(layer.masks) != len(task_ids):
            raise FormatError(f"layer {layer.name!r}: {len(layer.masks)} masks for {len(task_ids)} tasks")
        size = layer_size(layer.shape)
        out.append([_as_mask(m, size, f"layer {layer.name!r}, task {t}") for m, t in zip(layer.masks, task_ids)])
    return out


def _prepare(
    layers: list[LayerMasks], task_ids: list[int], codec: str, meta: dict | None
) -> tuple[dict, list[list[np.ndarray]]]:
    """Check everything `pack` is given; returns the header without its stream table, and the masks."""
    meta = {} if meta is None else meta
    check_meta(meta)  # bounded and iterative, before json.dumps could recurse
    try:
        plain = json.loads(json.dumps(meta, allow_nan=False)) == meta
    except (TypeError, ValueError):
        plain = False
    if not plain:
        raise FormatError("meta must be a dict of plain JSON values (str keys, no NaN)")
    for value in [*task_ids, *(d for layer in layers for d in layer.shape)]:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise FormatError(f"task ids and shapes must be integers, got {value!r}")
    header = {
        "codec": codec,
        "meta": meta,
        "task_ids": [int(t) for t in task_ids],
        "layers": [{"name": layer.name, "shape": [int(d) for d in layer.shape]} for layer in layers],
        "ones": [],
        "streams": {},
    }  # filled in by _assemble
    try:
        check_layout(header, MAX_TOTAL_BITS, hint="the most one .wsnm file may hold")
    except FormatError as exc:  # the same rules as for reading, reported without the "header:" prefix
        raise FormatError(str(exc).removeprefix("header: ")) from None
    masks = normalized_masks(layers, header["task_ids"])
    header["ones"] = [[int(np.count_nonzero(layer_masks[t])) for layer_masks in masks] for t in range(len(task_ids))]
    return header, masks


def _assemble(prepared: dict, codec: str, masks: list[list[np.ndarray]]) -> bytes:
    """The whole file with `codec`: prefix, canonical header, streams, CRC trailer."""
    header = {**prepared, "codec": codec}
    per_layer = [encode_layer(codec, layer_masks) for layer_masks in masks]
    body = [chunk for unit in zip(*per_layer) for chunk in unit] if per_layer else []
    offsets = np.cumsum([0] + [len(chunk) for chunk in body])[:-1]
    header["streams"] = {
        "crc32": [zlib.crc32(chunk) for chunk in body],
        "length": [len(chunk) for chunk in body],
        "offset": [int(o) for o in offsets],
    }
    check_stream_table(header)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise FormatError(f"header of {len(raw)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    out = b"".join([PREFIX.pack(MAGIC, VERSION, len(raw)), raw, *body])
    return out + TRAILER.pack(zlib.crc32(out))


def _smallest(prepared: dict, masks: list[list[np.ndarray]]) -> tuple[str, bytes]:
    """(codec, file) of the smallest file any codec writes; ties go to the first in CODECS.

    A codec whose header would exceed MAX_HEADER_BYTES is skipped (it could not write the file)."""
    best: tuple[str, bytes] | None = None
    first_error: FormatError | None = None
    for codec in CODECS:
        try:
            data = _assemble(prepared, codec, masks)
        except FormatError as exc:
            first_error = first_error or exc
            continue
        if best is None or len(data) < len(best[1]):
            best = (codec, data)
    if best is None:
        raise first_error
    return best


def _check_codec(codec) -> None:
    if codec not in PACK_CODECS:
        raise FormatError(f"unknown codec {codec!r} (known: {', '.join(PACK_CODECS)})")


def pack(layers: list[LayerMasks], task_ids: list[int], codec: str = "context", meta: dict | None = None) -> bytes:
    """Encode every layer's masks into a .wsnm file with `codec`, one of PACK_CODECS.

    `auto` writes the file of every codec in CODECS and returns the smallest (ties: the first in
    CODECS); its header names the codec used, so `auto` never appears in a file."""
    _check_codec(codec)
    prepared, masks = _prepare(layers, task_ids, CODECS[0] if codec == AUTO else codec, meta)
    return _smallest(prepared, masks)[1] if codec == AUTO else _assemble(prepared, codec, masks)


def auto_codec(layers: list[LayerMasks], task_ids: list[int], meta: dict | None = None) -> str:
    """The codec `pack(layers, task_ids, "auto", meta)` records (meta matters only near the header limit)."""
    prepared, masks = _prepare(layers, task_ids, CODECS[0], meta)
    return _smallest(prepared, masks)[0]


def describe(data: bytes, max_bits: int | None = None) -> dict:
    """Header and per-stream statistics of a .wsnm file; decodes everything, so checksums are verified."""
    header, start, packed = _read(data, max_bits)
    n_tasks = len(packed.task_ids)
    weights = sum(layer_size(layer.shape) for layer in packed.layers)
    streams = []
    for e in _stream_entries(header):
        size = layer_size(header["layers"][e.layer]["shape"])
        ones = [header["ones"][t][e.layer] for t in e.tasks]
        streams.append(
            {
                "layer": header["layers"][e.layer]["name"],
                "task_ids": [packed.task_ids[t] for t in e.tasks],
                "offset": start + e.offset,
                "bytes": e.length,
                "crc32": f"0x{e.crc32:08x}",
                "ones": ones,
                "density": [k / size if size else 0.0 for k in ones],
                "bits_per_weight_per_task": 8 * e.length / (size * len(e.tasks)) if size else 0.0,
            }
        )
    return {
        "version": packed.version,
        "codec": packed.codec,
        "task_ids": packed.task_ids,
        "tasks": n_tasks,
        "weights": weights,
        "layers": [
            {"name": layer.name, "shape": list(layer.shape), "weights": layer_size(layer.shape)}
            for layer in packed.layers
        ],
        "meta": packed.meta,
        "bytes": len(data),
        "header_bytes": start - PREFIX.size,
        "payload_bytes": sum(s["bytes"] for s in streams),
        "bits_per_weight_per_task": 8 * len(data) / (weights * n_tasks) if weights and n_tasks else 0.0,
        "streams": streams,
        "checksums_ok": True,
    }
