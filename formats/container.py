"""The `.wsnm` packed-mask file: magic, version, JSON header, coded streams, CRC32 trailer.

Byte regions in order (little-endian integers; docs/FORMAT.md is the specification):
  8 bytes magic | u16 version | u32 header length H | H bytes UTF-8 JSON header |
  the streams, back to back in stream-table order | u32 CRC32 of every byte before it
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from formats.codecs import CODECS, LayerDecoder, encode_layer, stream_groups
from formats.errors import FormatError

MAGIC = b"WSNM\x89\r\n\x1a"
VERSION = 1
PREFIX = struct.Struct("<8sHI")  # magic, version, header length
TRAILER = struct.Struct("<I")
MIN_FILE_BYTES = PREFIX.size + TRAILER.size
MAX_HEADER_BYTES = 1 << 20
MAX_LAYERS = 4096
MAX_TASKS = 65535
MAX_LAYER_WEIGHTS = 1 << 31
MAX_TOTAL_BITS = 1 << 36
MAX_NAME_CHARS = 256
MAX_DIMS = 32
MAX_TASK_ID = (1 << 31) - 1
HEADER_KEYS = {"codec", "layers", "meta", "ones", "streams", "task_ids"}
OPTIONAL_KEYS = {"meta"}
STREAM_KEYS = ("crc32", "length", "offset")  # columns of the stream table


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_size(shape) -> int:
    return math.prod(shape)


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
    return [StreamEntry(i, i % n_layers, groups[i // n_layers], table["offset"][i], table["length"][i],
                        table["crc32"][i]) for i in range(len(groups) * n_layers)]


def _bounded_list(header: dict, key: str, limit: int, what: str) -> list:
    """header[key], which must be a JSON list of at most `limit` entries."""
    value = header[key]
    if not isinstance(value, list):
        raise FormatError(f"header: {key!r} must be a list")
    if len(value) > limit:
        raise FormatError(f"header: {len(value)} {what} exceed the limit of {limit}")
    return value


def _check_layout(header, max_bits: int) -> None:
    """Validate codec, tasks, layers and the size limits (everything but the stream table)."""
    if not isinstance(header, dict):
        raise FormatError(f"header: expected a JSON object, got {type(header).__name__}")
    missing = HEADER_KEYS - OPTIONAL_KEYS - header.keys()
    if missing:
        raise FormatError(f"header: missing key(s) {', '.join(sorted(missing))}")
    unknown = header.keys() - HEADER_KEYS
    if unknown:
        raise FormatError(f"header: unknown key(s) {', '.join(sorted(unknown))}")
    codec = header["codec"]
    if codec not in CODECS:
        raise FormatError(f"header: unknown codec {codec!r} (known: {', '.join(CODECS)})")
    if not isinstance(header.get("meta", {}), dict):
        raise FormatError("header: 'meta' must be a JSON object")
    task_ids = _bounded_list(header, "task_ids", MAX_TASKS, "tasks")
    for t in task_ids:
        if not _is_int(t) or not 0 <= t <= MAX_TASK_ID:
            raise FormatError(f"header: task id {t!r} is not an integer in 0..{MAX_TASK_ID}")
    if len(set(task_ids)) != len(task_ids):
        raise FormatError("header: task ids are not unique")
    layers = _bounded_list(header, "layers", MAX_LAYERS, "layers")
    names = set()
    total_bits = 0
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.keys() != {"name", "shape"}:
            raise FormatError(f"header: layer {i} must be an object with exactly 'name' and 'shape'")
        name, shape = layer["name"], layer["shape"]
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise FormatError(f"header: layer {i} name must be a string of 1..{MAX_NAME_CHARS} characters")
        if name in names:
            raise FormatError(f"header: layer name {name!r} appears twice")
        names.add(name)
        if not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise FormatError(f"header: layer {name!r} shape must be a list of at most {MAX_DIMS} integers")
        for d in shape:
            if not _is_int(d) or not 0 <= d <= MAX_LAYER_WEIGHTS:
                raise FormatError(f"header: layer {name!r} shape has dimension {d!r}, "
                                  f"expected an integer in 0..{MAX_LAYER_WEIGHTS}")
        size = _layer_size(shape)
        if size > MAX_LAYER_WEIGHTS:
            raise FormatError(f"header: layer {name!r} has {size} weights, over the limit of {MAX_LAYER_WEIGHTS}")
        total_bits += size * len(task_ids)
    if total_bits > max_bits:
        raise FormatError(f"header: {total_bits} mask bits in total exceed the limit of {max_bits}")


def _check_stream_table(header: dict) -> None:
    n_tasks, n_layers = len(header["task_ids"]), len(header["layers"])
    expected = len(stream_groups(header["codec"], n_tasks)) * n_layers
    table = header["streams"]
    if not isinstance(table, dict) or set(table) != set(STREAM_KEYS):
        raise FormatError(f"header: 'streams' must be an object with exactly the lists "
                          f"{', '.join(STREAM_KEYS)}")
    for key in STREAM_KEYS:
        column = table[key]
        if not isinstance(column, list) or len(column) != expected:
            got = len(column) if isinstance(column, list) else type(column).__name__
            raise FormatError(f"header: streams.{key} has {got} entries, expected {expected}")
        for i, value in enumerate(column):
            if not _is_int(value) or value < 0:
                raise FormatError(f"header: streams.{key}[{i}] = {value!r} is not a non-negative integer")
    for i, crc in enumerate(table["crc32"]):
        if crc >= 1 << 32:
            raise FormatError(f"header: streams.crc32[{i}] = {crc} does not fit in 32 bits")
    ones = header["ones"]
    if not isinstance(ones, list) or len(ones) != n_tasks:
        raise FormatError(f"header: 'ones' must be a list of {n_tasks} lists (one per task)")
    sizes = [_layer_size(layer["shape"]) for layer in header["layers"]]
    for t, row in enumerate(ones):
        if not isinstance(row, list) or len(row) != n_layers or not all(
                _is_int(k) and 0 <= k <= n for k, n in zip(row, sizes)):
            raise FormatError(f"header: ones[{t}] = {row!r} is not a list of {n_layers} counts, "
                              f"each between 0 and its layer's size")


def _json_error(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _parse_json(raw: bytes):
    def no_duplicates(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def no_constants(name):
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except UnicodeDecodeError as exc:
        raise FormatError(f"header: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"header: not valid JSON ({_json_error(exc)})") from None


def _read(data: bytes, max_bits: int | None) -> tuple[dict, int, PackedMasks]:
    """Validate and fully decode; returns (header, byte offset of the stream region, content)."""
    limit = MAX_TOTAL_BITS if max_bits is None else max_bits
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
        raise FormatError(f"truncated: {len(data)} bytes, the {header_len}-byte header and the "
                          f"trailer need {start + TRAILER.size}")
    header = _parse_json(data[PREFIX.size : start])
    _check_layout(header, limit)
    _check_stream_table(header)
    entries = _stream_entries(header)
    region = len(data) - start - TRAILER.size
    end = 0
    for e in entries:
        if e.offset + e.length > region:
            raise FormatError(f"{_stream_label(header, e)}: bytes {e.offset}..{e.offset + e.length} lie "
                              f"outside the {region}-byte stream region (truncated file?)")
        if e.offset != end:
            raise FormatError(f"{_stream_label(header, e)}: offset {e.offset}, expected {end} "
                              f"(streams are stored back to back)")
        end += e.length
    if end != region:
        raise FormatError(f"trailing garbage: {region - end} bytes more than the header describes")
    stored, = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    computed = zlib.crc32(data[: len(data) - TRAILER.size])
    if stored != computed:
        raise FormatError(f"file CRC32 mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")
    chunks = []
    for e in entries:
        chunk = data[start + e.offset : start + e.offset + e.length]
        crc = zlib.crc32(chunk)
        if crc != e.crc32:
            raise FormatError(f"{_stream_label(header, e)}: CRC32 mismatch: stored 0x{e.crc32:08x}, "
                              f"computed 0x{crc:08x}")
        chunks.append(chunk)
    return header, start, _decode_streams(header, entries, chunks)


def _decode_streams(header: dict, entries: list[StreamEntry], chunks: list[bytes]) -> PackedMasks:
    codec, task_ids = header["codec"], header["task_ids"]
    layers = [LayerMasks(d["name"], tuple(d["shape"]), []) for d in header["layers"]]
    decoders = [LayerDecoder(codec, _layer_size(d["shape"])) for d in header["layers"]]
    for e, chunk in zip(entries, chunks):
        what = _stream_label(header, e)
        try:
            masks = decoders[e.layer].decode(chunk, len(e.tasks), what)
        except FormatError:
            raise
        except MemoryError:
            raise FormatError(f"{what}: out of memory while decoding") from None
        except (ValueError, IndexError, TypeError, OverflowError, RecursionError) as exc:
            raise FormatError(f"{what}: malformed stream ({type(exc).__name__}: {exc})") from None
        for t, mask in zip(e.tasks, masks):
            found, stated = int(np.count_nonzero(mask)), header["ones"][t][e.layer]
            if found != stated:
                raise FormatError(f"{what}: task {task_ids[t]} decoded with {found} ones, "
                                  f"the header says {stated}")
        layers[e.layer].masks.extend(masks)
    return PackedMasks(VERSION, codec, list(task_ids), layers, header.get("meta", {}))


def unpack(data: bytes, max_bits: int | None = None) -> PackedMasks:
    """Decode a .wsnm file; any malformed, corrupt, truncated or over-limit input raises FormatError."""
    return _read(data, max_bits)[2]


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
        size = _layer_size(layer.shape)
        out.append([_as_mask(m, size, f"layer {layer.name!r}, task {t}")
                    for m, t in zip(layer.masks, task_ids)])
    return out


def pack(layers: list[LayerMasks], task_ids: list[int], codec: str = "context",
         meta: dict | None = None) -> bytes:
    """Encode every layer's masks with `codec` into a .wsnm file."""
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise FormatError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        meta_json = json.dumps(meta, allow_nan=False)
        plain = json.loads(meta_json) == meta
    except (TypeError, ValueError):
        plain = False
    if not plain:
        raise FormatError("meta must be a dict of plain JSON values (str keys, no NaN)")
    for value in [*task_ids, *(d for layer in layers for d in layer.shape)]:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise FormatError(f"task ids and shapes must be integers, got {value!r}")
    header = {
        "codec": codec, "meta": meta, "task_ids": [int(t) for t in task_ids],
        "layers": [{"name": layer.name, "shape": [int(d) for d in layer.shape]} for layer in layers],
        "ones": [], "streams": {}}  # filled in below
    try:
        _check_layout(header, MAX_TOTAL_BITS)
    except FormatError as exc:  # the same rules as for reading, reported without the "header:" prefix
        raise FormatError(str(exc).removeprefix("header: ")) from None
    masks = normalized_masks(layers, header["task_ids"])
    per_layer = [encode_layer(codec, layer_masks) for layer_masks in masks]
    body = [chunk for unit in zip(*per_layer) for chunk in unit] if per_layer else []
    offsets = np.cumsum([0] + [len(chunk) for chunk in body])[:-1]
    header["ones"] = [[int(np.count_nonzero(layer_masks[t])) for layer_masks in masks]
                      for t in range(len(task_ids))]
    header["streams"] = {"crc32": [zlib.crc32(chunk) for chunk in body],
                         "length": [len(chunk) for chunk in body], "offset": [int(o) for o in offsets]}
    _check_stream_table(header)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(raw) > MAX_HEADER_BYTES:
        raise FormatError(f"header of {len(raw)} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    out = b"".join([PREFIX.pack(MAGIC, VERSION, len(raw)), raw, *body])
    return out + TRAILER.pack(zlib.crc32(out))


def describe(data: bytes, max_bits: int | None = None) -> dict:
    """Header and per-stream statistics of a .wsnm file; decodes everything, so checksums are verified."""
    header, start, packed = _read(data, max_bits)
    n_tasks = len(packed.task_ids)
    weights = sum(_layer_size(layer.shape) for layer in packed.layers)
    streams = []
    for e in _stream_entries(header):
        size = _layer_size(header["layers"][e.layer]["shape"])
        ones = [header["ones"][t][e.layer] for t in e.tasks]
        streams.append({
            "layer": header["layers"][e.layer]["name"], "task_ids": [packed.task_ids[t] for t in e.tasks],
            "offset": start + e.offset, "bytes": e.length, "crc32": f"0x{e.crc32:08x}", "ones": ones,
            "density": [k / size if size else 0.0 for k in ones],
            "bits_per_weight_per_task": 8 * e.length / (size * len(e.tasks)) if size else 0.0})
    return {
        "version": packed.version, "codec": packed.codec, "task_ids": packed.task_ids,
        "tasks": n_tasks, "weights": weights,
        "layers": [{"name": layer.name, "shape": list(layer.shape), "weights": _layer_size(layer.shape)}
                   for layer in packed.layers],
        "meta": packed.meta, "bytes": len(data), "header_bytes": start - PREFIX.size,
        "payload_bytes": sum(s["bytes"] for s in streams),
        "bits_per_weight_per_task": 8 * len(data) / (weights * n_tasks) if weights and n_tasks else 0.0,
        "streams": streams, "checksums_ok": True}
