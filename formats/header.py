"""The `.wsnm` JSON header: parsing with hard bounds, the name rules, the schema and the size limits.

Every check raises FormatError with a one-line message that says what is wrong and where
(docs/FORMAT.md, sections 3 and 5). Nothing here reads the environment: callers pass `max_bits`.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from formats.codecs import CODECS, stream_groups
from formats.errors import FormatError

MAX_HEADER_BYTES = 1 << 20
MAX_LAYERS = 4096
MAX_TASKS = 65535
MAX_LAYER_WEIGHTS = 1 << 31
MAX_TOTAL_BITS = 1 << 36  # the most a writer may put in one file
DEFAULT_MAX_BITS = 1 << 30  # what a reader decodes unless its caller raises the limit
LIMIT_HINT = "raise it with WSN_MAX_MASK_BITS"  # the CLI reads that variable and passes max_bits
MAX_NAME_CHARS = 256
MAX_DIMS = 32
MAX_TASK_ID = (1 << 31) - 1
MAX_JSON_DEPTH = 16  # the header object is level 1
MAX_META_VALUES = 4096  # JSON values inside `meta` at any depth (object keys not counted)
HEADER_KEYS = {"codec", "layers", "meta", "ones", "streams", "task_ids"}
OPTIONAL_KEYS = {"meta"}
STREAM_KEYS = ("crc32", "length", "offset")  # columns of the stream table

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # categories Cc and Cs
# White_Space characters outside Cc (as of Unicode 14); a name may not start or end with one
SPACES = frozenset(
    "\u0020\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BRACKET_STEP = np.zeros(256, dtype=np.int8)
_BRACKET_STEP[[0x5B, 0x7B]] = 1
_BRACKET_STEP[[0x5D, 0x7D]] = -1


class NonFinite:
    """A JSON number whose value is not a finite double (e.g. `1e400`), kept as its text."""

    def __init__(self, text: str):
        self.text = text


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def layer_size(shape) -> int:
    return math.prod(shape)


def _code_point(ch: str) -> str:
    return f"U+{ord(ch):04X}"


# --- parsing ------------------------------------------------------------------------------------


def _check_nesting(raw: bytes) -> None:
    """Bound the bracket depth before the (recursive) JSON parser sees the text."""
    outside = _JSON_STRING.sub(lambda m: b"_" * len(m[0]), raw)  # strings blanked, offsets kept
    step = _BRACKET_STEP[np.frombuffer(outside, dtype=np.uint8)]  # +1 for [ {, -1 for ] }, else 0
    too_deep = np.flatnonzero(np.cumsum(step, dtype=np.int32) > MAX_JSON_DEPTH)
    if too_deep.size:
        raise FormatError(f"header: JSON nested deeper than {MAX_JSON_DEPTH} levels (at byte {too_deep[0]})")


def _json_error(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_header(raw: bytes):
    """UTF-8 JSON with no duplicate keys, NaN/Infinity, non-finite numbers or deep nesting."""

    def no_duplicates(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def no_constants(name):
        raise ValueError(f"{name} is not allowed")

    def finite(text):
        value = float(text)
        return value if math.isfinite(value) else NonFinite(text)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"header: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    _check_nesting(raw)
    try:
        header = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants, parse_float=finite)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"header: not valid JSON ({_json_error(exc)})") from None
    check_values(header, "", 1)
    return header


def _join(path: str, key) -> str:
    """A JSON path in Python subscript notation: `meta['run'][0]`, `layers[2]['name']`."""
    if not path and key in HEADER_KEYS:
        return key
    return f"{path}[{key!r}]"


_PLAIN_SCALARS = (int, float, bool, type(None))


def check_values(root, path: str, depth: int, prefix: str = "header: ") -> None:
    """Every string (keys too) is valid Unicode, every number finite, nesting <= MAX_JSON_DEPTH,
    at most MAX_META_VALUES values inside `meta`. Iterative, so a cyclic or deep object is safe."""
    stack = [(root, path, depth, path == "meta")]
    meta_values = 0
    while stack:
        value, where, level, in_meta = stack.pop()
        at = f"{prefix}{where}: " if where else prefix
        if isinstance(value, NonFinite):
            raise FormatError(f"{at}number {value.text[:40]} is not finite")
        if isinstance(value, str):
            _check_string(value, f"{at}string")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if level > MAX_JSON_DEPTH:
            raise FormatError(f"{at}JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if in_meta:
            meta_values += len(value)
            if meta_values > MAX_META_VALUES:
                raise FormatError(f"{prefix}meta: more than {MAX_META_VALUES} values")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(key, str):
                _check_string(key, f"{at}a key")
            if type(child) in _PLAIN_SCALARS:  # the common case (stream tables), kept fast
                continue
            child_path = _join(where, key)
            stack.append((child, child_path, level + 1, in_meta or child_path == "meta"))


def _check_string(text: str, what: str) -> None:
    bad = _SURROGATE.search(text)
    if bad:
        raise FormatError(
            f"{what} holds a lone surrogate {_code_point(bad[0])} at character {bad.start()} (not valid Unicode)"
        )


def check_meta(meta) -> None:
    """The rules for `meta` as a writer sees them (messages without the "header: " prefix)."""
    if not isinstance(meta, dict):
        raise FormatError(f"meta must be a dict, got {type(meta).__name__}")
    check_values(meta, "meta", 2, prefix="")


# --- the schema and the limits -----------------------------------------------------------------


def name_problem(name) -> str | None:
    """Why `name` cannot be a layer name, or None (FORMAT.md 3: names are safe path components)."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        return f"must be a string of 1..{MAX_NAME_CHARS} characters"
    bad = _CONTROL_OR_SURROGATE.search(name)
    if bad:
        kind = "a lone surrogate" if "\ud800" <= bad[0] <= "\udfff" else "a control character"
        return f"{name!r} holds {kind} {_code_point(bad[0])} at character {bad.start()}"
    if "/" in name or "\\" in name:
        return f"{name!r} holds a path separator ('/' or '\\')"
    if name in (".", ".."):
        return f"{name!r} is not allowed"
    if name[0] in SPACES or name[-1] in SPACES:
        return f"{name!r} has leading or trailing whitespace"
    return None


def bounded_list(header: dict, key: str, limit: int, what: str) -> list:
    """header[key], which must be a JSON list of at most `limit` entries."""
    value = header[key]
    if not isinstance(value, list):
        raise FormatError(f"header: {key!r} must be a list")
    if len(value) > limit:
        raise FormatError(f"header: {len(value)} {what} exceed the limit of {limit}")
    return value


def check_layout(header, max_bits: int, hint: str = LIMIT_HINT) -> None:
    """Validate codec, tasks, layers and the size limits (everything but the stream table)."""
    if not isinstance(header, dict):
        raise FormatError(f"header: expected a JSON object, got {type(header).__name__}")
    missing = HEADER_KEYS - OPTIONAL_KEYS - header.keys()
    if missing:
        raise FormatError(f"header: missing key(s) {', '.join(sorted(missing))}")
    unknown = header.keys() - HEADER_KEYS
    if unknown:
        raise FormatError(f"header: unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
    codec = header["codec"]
    if codec not in CODECS:
        raise FormatError(f"header: unknown codec {codec!r} (known: {', '.join(CODECS)})")
    if not isinstance(header.get("meta", {}), dict):
        raise FormatError("header: 'meta' must be a JSON object")
    task_ids = bounded_list(header, "task_ids", MAX_TASKS, "tasks")
    for t in task_ids:
        if not is_int(t) or not 0 <= t <= MAX_TASK_ID:
            raise FormatError(f"header: task id {t!r} is not an integer in 0..{MAX_TASK_ID}")
    if len(set(task_ids)) != len(task_ids):
        raise FormatError("header: task ids are not unique")
    layers = bounded_list(header, "layers", MAX_LAYERS, "layers")
    names = set()
    total_bits = 0
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.keys() != {"name", "shape"}:
            raise FormatError(f"header: layer {i} must be an object with exactly 'name' and 'shape'")
        name, shape = layer["name"], layer["shape"]
        problem = name_problem(name)
        if problem:
            raise FormatError(f"header: layer {i} name {problem}")
        if name in names:
            raise FormatError(f"header: layer name {name!r} appears twice")
        names.add(name)
        if not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise FormatError(f"header: layer {name!r} shape must be a list of at most {MAX_DIMS} integers")
        for d in shape:
            if not is_int(d) or not 0 <= d <= MAX_LAYER_WEIGHTS:
                raise FormatError(
                    f"header: layer {name!r} shape has dimension {d!r}, expected an integer in 0..{MAX_LAYER_WEIGHTS}"
                )
        size = layer_size(shape)
        if size > MAX_LAYER_WEIGHTS:
            raise FormatError(f"header: layer {name!r} has {size} weights, over the limit of {MAX_LAYER_WEIGHTS}")
        total_bits += size * len(task_ids)
    if total_bits > max_bits:
        raise FormatError(f"header: {total_bits} mask bits in total exceed the limit of {max_bits}; {hint}")


def check_stream_table(header: dict) -> None:
    n_tasks, n_layers = len(header["task_ids"]), len(header["layers"])
    expected = len(stream_groups(header["codec"], n_tasks)) * n_layers
    table = header["streams"]
    if not isinstance(table, dict) or set(table) != set(STREAM_KEYS):
        raise FormatError(f"header: 'streams' must be an object with exactly the lists {', '.join(STREAM_KEYS)}")
    for key in STREAM_KEYS:
        column = table[key]
        if not isinstance(column, list) or len(column) != expected:
            got = len(column) if isinstance(column, list) else type(column).__name__
            raise FormatError(f"header: streams.{key} has {got} entries, expected {expected}")
        for i, value in enumerate(column):
            if not is_int(value) or value < 0:
                raise FormatError(f"header: streams.{key}[{i}] = {value!r} is not a non-negative integer")
    for i, crc in enumerate(table["crc32"]):
        if crc >= 1 << 32:
            raise FormatError(f"header: streams.crc32[{i}] = {crc} does not fit in 32 bits")
    ones = header["ones"]
    if not isinstance(ones, list) or len(ones) != n_tasks:
        raise FormatError(f"header: 'ones' must be a list of {n_tasks} lists (one per task)")
    sizes = [layer_size(layer["shape"]) for layer in header["layers"]]
    for t, row in enumerate(ones):
        if (
            not isinstance(row, list)
            or len(row) != n_layers
            or not all(is_int(k) and 0 <= k <= n for k, n in zip(row, sizes))
        ):
            raise FormatError(
                f"header: ones[{t}] = {row!r} is not a list of {n_layers} counts, each between 0 and its layer's size"
            )
