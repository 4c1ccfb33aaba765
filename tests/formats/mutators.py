"""Structure-aware `.wsnm` mutants: change header fields or the stream split, then reseal every CRC.

`mutate_structure(data, rng)` takes a valid file and a `random.Random` (or hypothesis' `st.randoms()`)
and returns (kind, mutant). The header is re-serialised as JSON (sometimes not canonically), every
stream CRC32 that still points inside the stream region is recomputed, and the file CRC32 is fixed,
so the reader's checks past the checksums see the damage. Used by tests/formats/test_fuzz.py and
benchmarks/fuzz_loaders.py (--target wsnm).
"""

from __future__ import annotations

import copy
import json
import math
import random
import zlib

import numpy as np

from formats import CODECS, LayerMasks, pack
from tests.formats.helpers import correlated_masks, random_masks, seal, split

# Raw JSON texts json.dumps cannot write: placed as marker strings, substituted after dumping.
RAW = {
    "1e400": "1e400",
    "-1e400": "-1e400",
    "1E+999": "1E+999",
    "deep900": "[" * 900 + "]" * 900,
    "deep17": '{"a":' * 17 + "0" + "}" * 17,
    "longint": "9" * 40,
    "exp-int": "1e3",
    "neg-zero": "-0",
}
NUMBERS = [
    0,
    -1,
    1,
    2,
    7,
    2**31 - 1,
    2**31,
    2**32,
    2**32 - 1,
    2**36,
    2**63,
    2**64,
    -(2**63),
    10**30,
    0.5,
    1.0,
    -0.0,
    1e308,
    True,
    False,
    None,
    "7",
    [],
    {},
    *(f"@RAW:{k}@" for k in RAW),
]
STRINGS = [
    "\ud800",
    "a\udc00b",
    "\udbff\udfff",
    "\x00",
    "a\nb",
    "\x7f",
    "\x85",
    "x" * 300,
    "y" * 256,
    "",
    ".",
    "..",
    "...",
    "a/b",
    "a\\b",
    " a",
    "a ",
    "\u3000",
    "\u2028",
    "é",
    "😀",
    "a",
    "b",
    "context",
    "packbits",
    "auto",
    "paper-huffman",
    "gzip",
    0,
    None,
]
SHAPES = [
    [2**31],
    [2**31 + 1],
    [2**16, 2**15],
    [2**15, 2**15 + 1],
    [2**29],
    [2**20],
    [0],
    [],
    [2, 0],
    [1] * 33,
    [2**31, 2**31],
    [-1],
    [1.5],
    ["3"],
    None,
    5,
]
META_VALUES = [
    "@RAW:deep900@",
    "@RAW:deep17@",
    "@RAW:1e400@",
    [[[[[[[[[[[[[[[0]]]]]]]]]]]]]]],
    list(range(5000)),
    {"\ud800": 1},
    {"k": "\udfff"},
    "z" * 5000,
    {"x": {"y": [1, 2, {"z": None}]}},
    "@RAW:longint@",
]


def sample_files(seed: int = 99) -> list[bytes]:
    """Valid files of every codec: two layers (one 2-d), 1, 3 or 9 tasks (paper-huffman groups)."""
    rng = np.random.default_rng(seed)
    files = []
    for codec in CODECS:
        for n, tasks, density in ((13, 3, 0.3), (64, 9, 0.1), (1, 1, 0.5), (200, 2, 0.45)):
            layers = [
                LayerMasks("a", (n,), correlated_masks(rng, n, tasks, density)),
                LayerMasks("b.w", (2, 4), random_masks(rng, 8, tasks, density)),
            ]
            files.append(pack(layers, list(range(3, 3 + tasks)), codec, {"k": n, "run": {"lr": 0.001}}))
    return files


def _paths(node, kinds: tuple[type, ...], path=()) -> list[tuple]:
    """Paths (tuples of keys / indices) to every value of one of `kinds` (bool is not a number)."""
    out = []
    if isinstance(node, kinds) and not (isinstance(node, bool) and int in kinds):
        out.append(path)
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, kinds, (*path, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += _paths(child, kinds, (*path, i))
    return out


def _get(node, path):
    for key in path:
        node = node[key]
    return node


def _put(header, path, value):
    _get(header, path[:-1])[path[-1]] = value


def _chunks(header: dict, body: bytes) -> list[bytes]:
    table = header["streams"]
    return [body[o : o + n] for o, n in zip(table["offset"], table["length"])]


def _retable(header: dict, chunks: list[bytes]) -> bytes:
    """Rewrite the stream table for `chunks` (lengths, offsets, CRCs all consistent)."""
    lengths = [len(c) for c in chunks]
    header["streams"] = {
        "crc32": [zlib.crc32(c) for c in chunks],
        "length": lengths,
        "offset": [int(o) for o in np.cumsum([0, *lengths])[:-1]],
    }
    return b"".join(chunks)


def _mutate_number(header, body, rng):
    path = rng.choice(_paths(header, (int, float)))
    old = _get(header, path)
    if isinstance(old, int) and rng.random() < 0.4:
        _put(header, path, old + rng.choice([-2, -1, 1, 2, 8, 2**31, -old - 1]))
    else:
        _put(header, path, copy.deepcopy(rng.choice(NUMBERS)))
    return body


def _mutate_string(header, body, rng):
    path = rng.choice(_paths(header, (str,)))
    _put(header, path, rng.choice(STRINGS))
    return body


def _mutate_key(header, body, rng):
    parents = [()] + [p for p in _paths(header, (dict,)) if p]
    parent = _get(header, rng.choice(parents))
    keys = sorted(parent)
    action = rng.choice(["delete", "rename", "add"] if keys else ["add"])
    if action == "add":
        parent[rng.choice(["extra", "meta", "codec", "\ud800", "a\nb", ""])] = rng.choice(NUMBERS)
    else:
        key = rng.choice(keys)
        value = parent.pop(key)
        if action == "rename":
            parent[rng.choice([s for s in STRINGS if isinstance(s, str)])] = value
    return body


def _mutate_list(header, body, rng):
    paths = _paths(header, (list,))
    path = rng.choice(paths)
    items = _get(header, path)
    action = rng.choice(["append", "pop", "duplicate", "wrong type", "reverse", "clear", "nest"])
    if action == "append":
        items.append(copy.deepcopy(items[-1]) if items and rng.random() < 0.7 else rng.choice(NUMBERS))
    elif action == "pop" and items:
        items.pop(rng.randrange(len(items)))
    elif action == "duplicate" and items:
        items.insert(0, copy.deepcopy(items[rng.randrange(len(items))]))
    elif action == "reverse":
        items.reverse()
    elif action == "clear":
        items.clear()
    elif action == "nest" and path:
        _put(header, path, [items])
    elif path:
        _put(header, path, rng.choice([{}, {"0": 1}, "list", 3, None, True]))
    return body


def _mutate_shape(header, body, rng):
    if not header["layers"]:
        return body
    layer = rng.choice(header["layers"])
    n = math.prod(layer["shape"])
    layer["shape"] = copy.deepcopy(rng.choice([*SHAPES, [n + 1], [max(n - 1, 0)], [n, 1], [1, n], [n, n], [8 * n]]))
    return body


def _mutate_tasks(header, body, rng):
    """Add, drop, reorder or duplicate whole tasks, keeping the stream table consistent with the body."""
    chunks = _chunks(header, body)
    n_layers = len(header["layers"])
    per_unit = 7 if header["codec"] == "paper-huffman" else 1
    units = [chunks[i : i + n_layers] for i in range(0, len(chunks), n_layers)] if n_layers else []
    ids, ones = header["task_ids"], header["ones"]
    action = rng.choice(["add", "drop last", "drop first", "swap", "duplicate id", "ones"])
    if action == "add":
        ids.append(max(ids, default=0) + 1)
        ones.append(copy.deepcopy(ones[-1]) if ones else [0] * n_layers)
        if units and (per_unit == 1 or len(ids) % 7 == 1):
            units.append(list(units[-1]))
    elif action == "drop last" and ids:
        ids.pop()
        ones.pop()
        if units and (per_unit == 1 or len(ids) % 7 == 0):
            units.pop()
    elif action == "drop first" and ids:
        del ids[:per_unit], ones[:per_unit]
        units = units[1:]
    elif action == "swap" and len(units) > 1:
        i, j = rng.sample(range(len(units)), 2)
        units[i], units[j] = units[j], units[i]
    elif action == "duplicate id" and len(ids) > 1:
        ids[1] = ids[0]
    elif ones and n_layers:
        row = rng.choice(ones)
        col = rng.randrange(n_layers)
        size = math.prod(header["layers"][col]["shape"])
        row[col] = rng.choice([0, size, size + 1, row[col] + 1, max(row[col] - 1, 0), -1])
    return _retable(header, [c for unit in units for c in unit])


def _mutate_streams(header, body, rng):
    """Re-split, swap, cut or grow streams; the table (lengths, offsets, CRCs) follows the new split."""
    chunks = _chunks(header, body)
    if not chunks:
        return body
    i = rng.randrange(len(chunks))
    action = rng.choice(["move boundary", "swap", "truncate", "extend", "empty", "replace", "raw table"])
    if action == "move boundary" and i + 1 < len(chunks):
        joined = chunks[i] + chunks[i + 1]
        cut = rng.randrange(len(joined) + 1)
        chunks[i], chunks[i + 1] = joined[:cut], joined[cut:]
    elif action == "swap" and len(chunks) > 1:
        j = rng.randrange(len(chunks))
        chunks[i], chunks[j] = chunks[j], chunks[i]
    elif action == "truncate":
        chunks[i] = chunks[i][: rng.randrange(len(chunks[i]) + 1)]
    elif action == "extend":
        chunks[i] += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
    elif action == "empty":
        chunks[i] = b""
    elif action == "replace":
        chunks[i] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
    elif action == "raw table":  # break the table itself; CRCs are refreshed only where they can be
        column = rng.choice(["offset", "length"])
        header["streams"][column][i] = rng.choice([0, 1, 2**31, 2**63, header["streams"][column][i] + 1])
        return body
    return _retable(header, chunks)


def _mutate_codec(header, body, rng):
    header["codec"] = rng.choice([c for c in CODECS if c != header["codec"]] + ["auto", "Context", ""])
    return body


def _mutate_meta(header, body, rng):
    meta = header.setdefault("meta", {})
    meta[rng.choice(["k", "deep", "x", "\udfff"])] = copy.deepcopy(rng.choice(META_VALUES))
    return body


MUTATORS = {
    "number": _mutate_number,
    "string": _mutate_string,
    "key": _mutate_key,
    "list": _mutate_list,
    "shape": _mutate_shape,
    "tasks": _mutate_tasks,
    "streams": _mutate_streams,
    "codec": _mutate_codec,
    "meta": _mutate_meta,
}


def _refresh_crcs(header, body: bytes) -> None:
    """Recompute each stream CRC32 whose (offset, length) is a valid slice of the body."""
    table = header.get("streams")
    if not isinstance(table, dict) or not all(isinstance(table.get(k), list) for k in ("crc32", "length", "offset")):
        return
    for i, (o, n) in enumerate(zip(table["offset"], table["length"])):
        ok = all(type(v) is int and v >= 0 for v in (o, n)) and o + n <= len(body)
        if ok and i < len(table["crc32"]):
            table["crc32"][i] = zlib.crc32(body[o : o + n])


def serialise(header, rng: random.Random) -> bytes:
    """JSON (canonical or not) with the @RAW:...@ markers replaced by their raw text."""
    text = json.dumps(
        header,
        sort_keys=rng.random() < 0.8,
        ensure_ascii=True,
        separators=(",", ":") if rng.random() < 0.8 else (", ", ": "),
    )
    for key, raw in RAW.items():
        text = text.replace(f'"@RAW:{key}@"', raw)
    return text.encode("ascii")


def mutate_structure(data: bytes, rng: random.Random, rounds: int | None = None) -> tuple[str, bytes]:
    """(mutation kinds, mutant) from a valid file: 1-3 mutations, CRCs resealed."""
    header, body = split(data)
    kinds = []
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 3])):
        kind = rng.choice(sorted(MUTATORS))
        try:
            body = MUTATORS[kind](header, body, rng)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            kind += " (skipped)"  # an earlier round removed what this one edits
        kinds.append(kind)
    _refresh_crcs(header, body)
    return "+".join(kinds), seal(None, body, raw_header=serialise(header, rng))
