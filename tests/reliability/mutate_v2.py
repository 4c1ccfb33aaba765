"""Structure-aware mutants of version-2 checkpoints (safetensors), with the checksums recomputed.

A file is split into its parts (`V2File`: the `__metadata__` strings, the tensors as (name, dtype,
shape, bytes), extra header keys), one to three mutations are applied, and the file is written again
with consistent offsets, the meta sha256 and every tensor checksum recomputed (90% of the time), so
the checks behind the checksums see the damage. Mutations reach every level: the header's entries
(dtype, shape, offsets, keys), `__metadata__` fields, the meta JSON's values (numbers, strings,
lists, nesting, unknown keys, raw JSON texts json.dumps cannot write), the masks tensor (a mutated
`.wsnm` with its CRCs resealed), tensor values, dropped, added and renamed tensors, and the header
text itself. `mutate_v2(raw, rng)` takes a `random.Random` (hypothesis' `st.randoms()`, or a seed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import struct
from dataclasses import dataclass, field

import numpy as np

from tests.reliability.fuzzing import mutate_bytes
from tests.reliability.spec_reader import auth_message, record_digest

DTYPES = {"F32": "<f4", "I64": "<i8", "I32": "<i4", "U8": "|u1"}  # what the loader accepts
OTHER_DTYPES = ["F16", "BF16", "F64", "BOOL", "I8", "I16", "U16", "U32", "U64", "F8_E4M3", "f32", "", 7, None, ["F32"]]
NUMBERS = [
    0,
    -1,
    1,
    2,
    3,
    7,
    255,
    256,
    2**16,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    0.0,
    -0.0,
    0.5,
    1.0,
    1.5,
    1e-300,
    1e308,
    True,
    False,
    None,
]
STRINGS = [
    "",
    "x",
    "wsn",
    "finetune",
    "mlp",
    "conv",
    "resnet18",
    "npz",
    "split-digits",
    "pmnist",
    "layers.0",
    "layers.9",
    "../etc/passwd",
    "a" * 300,
    "é😀",
    "\x00",
    "\ud800",
    "0" * 64,
    "f" * 64,
    "cuda",
    "2026-01-01",
]
CONTAINERS = [
    [],
    [1],
    [0],
    [-1],
    [64],
    [8, 8],
    [1, 64],
    [65536, 65536],
    [2**20] * 3,
    ["a"],
    [None],
    [[1]],
    {},
    {"a": 1},
    {"task": 1},
    list(range(300)),
    [[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]],
]
RAW_JSON = ["1e400", "-1e400", "NaN", "Infinity", "9" * 400, "[" * 3000 + "]" * 3000, '{"a":' * 40 + "0" + "}" * 40]
TENSOR_NAMES = [
    "head/9/weight",
    "head/1/extra",
    "layer/layers.0/weight2",
    "layer/x/weight",
    "layer/layers.9/weight",
    "prep/9/mean",
    "pred/9",
    "norm/1/bn.running_mean",
    "mask/1/layers.0",
    "masks2",
    "junk",
    "",
    "a" * 300,
]


@dataclass
class V2File:
    metadata: dict
    tensors: list[list]  # [name, dtype, shape, data bytes]
    extra: dict = field(default_factory=dict)  # header keys that are not tensors (none in a valid file)


def parse(raw: bytes) -> V2File:
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    entries = sorted(
        ((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]
    )
    tensors = [[k, v["dtype"], list(v["shape"]), data[v["data_offsets"][0] : v["data_offsets"][1]]] for k, v in entries]
    return V2File(dict(header["__metadata__"]), tensors)


def digest(dtype, shape, data: bytes) -> str | None:
    """tensor_digest of the array these parts describe, or None when they describe none."""
    if (
        not isinstance(dtype, str)
        or dtype not in DTYPES
        or not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        return None
    np_dtype = np.dtype(DTYPES[dtype])
    if math.prod(shape) * np_dtype.itemsize != len(data):
        return None
    h = hashlib.sha256(f"{np_dtype.str}{list(shape)}".encode())
    h.update(data)
    return h.hexdigest()


def serialize(f: V2File, recompute: bool = True, entry_edits=(), header_edit=None, restamp: bool = True) -> bytes:
    """The file's bytes; `entry_edits` are (index, key, value) applied to header entries after the
    offsets are laid out; `header_edit(text) -> text` changes the header JSON text at the end. With
    `recompute`, the checksums (and, with `restamp`, the records' record digests, in place in the
    text) are made valid again."""
    header, offset, sums = {}, 0, {}
    for name, dtype, shape, data in f.tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        sums[name] = digest(dtype, shape, data)
    metadata = dict(f.metadata)
    for i, key, value in entry_edits:
        name = f.tensors[i][0]
        if key is None:
            header[name] = value
        elif not isinstance(header[name], dict):
            continue
        elif value is _DELETE:
            header[name].pop(key, None)
        else:
            header[name][key] = value
            if key in ("dtype", "shape") and isinstance(header[name], dict):
                sums[name] = digest(header[name].get("dtype"), header[name].get("shape"), f.tensors[i][3])
    if recompute:
        old = _json_or(metadata.get("checksums"), {})
        table = {
            n: (s if s is not None else (old.get(n) if isinstance(old, dict) else None) or "0" * 64)
            for n, s in sums.items()
        }
        metadata["checksums"] = json.dumps(table, sort_keys=True, separators=(",", ":"))
        if isinstance(metadata.get("meta"), str):
            if restamp:
                metadata["meta"] = restamp_records(metadata["meta"])
            metadata["meta_sha256"] = hashlib.sha256(metadata["meta"].encode("utf-8", "surrogatepass")).hexdigest()
        if "sha256" in metadata:  # a snapshot's whole-file checksum
            fields = {k: v for k, v in metadata.items() if k not in ("format", "version", "sha256", "hmac")}
            if all(isinstance(v, str) for v in fields.values()) and isinstance(metadata.get("format"), str):
                version = metadata.get("version")
                message = auth_message(metadata["format"], int(version) if str(version).isdigit() else 0, fields)
                metadata["sha256"] = hashlib.sha256(message).hexdigest()
    header["__metadata__"] = metadata
    header.update(f.extra)
    text = json.dumps(header)
    if header_edit is not None:
        text = header_edit(text)
    body = text.encode("utf-8", "surrogatepass")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + b"".join(t[3] for t in f.tensors)


_DELETE = object()


def restamp_records(text: str) -> str:
    """The meta text with each record's `record_digest` replaced, in place, by the digest of what the
    record now says (section 6), where the text parses and the old digest appears once: mutants then
    reach the checks behind the record digest. Anything else is left as it is."""
    try:
        meta = json.loads(text)
        records = meta["tasks"]
        for record in records:
            old, new = record["record_digest"], record_digest(meta, record)
            if isinstance(old, str) and len(old) == 64 and text.count(old) == 1:
                text = text.replace(old, new)
    except Exception:  # noqa: BLE001 - a mutant this broken is refused before any record digest matters
        pass
    return text


def _json_or(text, default):
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return default


def _weird(rng: random.Random):
    pool = rng.choice((NUMBERS, STRINGS, CONTAINERS, ["@RAW@"]))
    value = rng.choice(pool)
    return f"@RAW:{rng.choice(RAW_JSON)}@" if value == "@RAW@" else copy.deepcopy(value)


def _paths(node, path=()):
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _dump_meta(meta, ascii_only: bool) -> str:
    """json.dumps, then the raw-JSON markers replaced by texts json.dumps cannot write."""
    text = json.dumps(meta, ensure_ascii=ascii_only)
    for raw in RAW_JSON:
        text = text.replace(json.dumps(f"@RAW:{raw}@", ensure_ascii=ascii_only), raw)
    return text


def _mutate_meta(f: V2File, rng: random.Random) -> None:
    meta = _json_or(f.metadata.get("meta"), None)
    if not isinstance(meta, dict):
        f.metadata["meta"] = mutate_bytes(str(f.metadata.get("meta", "")).encode("utf-8", "surrogatepass"), rng).decode(
            "utf-8", "replace"
        )
        return
    op = rng.choice(("value", "value", "value", "delete", "unknown", "duplicate", "swap", "text", "shape"))
    paths = _paths(meta)
    path = rng.choice(paths)
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    if op == "value":
        parent[path[-1]] = _weird(rng)
    elif op == "delete":
        del parent[path[-1]]
    elif op == "unknown":
        target = parent if isinstance(parent, dict) else meta
        target[rng.choice(("surprise", "tasks2", "__proto__", "layers", ""))] = _weird(rng)
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[path[-1]]))
    elif op == "swap" and isinstance(parent, list) and len(parent) > 1:
        i, j = rng.sample(range(len(parent)), 2)
        parent[i], parent[j] = parent[j], parent[i]
    elif op == "shape":  # the shape-defining fields, to values a real network could have
        spec = meta.get("model") if isinstance(meta.get("model"), dict) else meta
        spec[rng.choice(("hidden", "input_shape", "arch", "width"))] = rng.choice(
            [
                [100, 100],
                [8],
                [64, 64, 64],
                [65536, 1024],
                [32768, 2048],
                [65536, 512],
                [1024, 1024],
                [16],
                [1, 8, 8],
                "conv",
                "lenet",
                4,
                [65536],
            ]
        )  # the large ones are legal networks of 0.3 to 0.6 GB: to be refused before they are allocated
    text = _dump_meta(meta, ascii_only=rng.random() < 0.8)
    if op == "text":  # a duplicate key, or bytes changed inside the text
        if rng.random() < 0.5:
            text = text.replace('{"', '{"seed": 1, "', 1)
        else:
            text = mutate_bytes(text.encode("utf-8", "surrogatepass"), rng).decode("utf-8", "replace")
    f.metadata["meta"] = text


LONG_PATHS = [
    "/" + "a" * 300,
    "/tmp/" + "b" * 256 + "/data",
    "/" + "/".join(["c" * 200] * 20),
    "/tmp/a\x00b",
    "relative/data",
    "~/no-such-folder",
    "/dev/null",
    "/proc/self",
    "",
]
NULLABLE_META = ["n_tasks", "data_root", "default_capacity", "wsn_version", "image_size", "channels"]
NULLABLE_RECORD = [
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "device",
    "best_epoch",
    "val_accuracy",
    "train_seconds",
    "learned_at",
    "input_dtype",
    "capacity",
    "preprocess",
    "accuracy_row",
]


def _mutate_path(f: V2File, rng: random.Random) -> None:
    """A data root no file system opens (a component over 255 bytes, a NUL, too long), with a
    benchmark that reads it."""
    meta = _json_or(f.metadata.get("meta"), None)
    if not isinstance(meta, dict):
        return
    meta["data_root"] = rng.choice(LONG_PATHS)
    if rng.random() < 0.7:
        meta["benchmark"] = rng.choice(["npz", "image-folder", "pmnist", "split-mnist", "split-tinyimagenet"])
    f.metadata["meta"] = json.dumps(meta)


def _mutate_nullable(f: V2File, rng: random.Random) -> None:
    """An optional field the schema allows to be null (or absent): null, or removed."""
    meta = _json_or(f.metadata.get("meta"), None)
    if not isinstance(meta, dict):
        return
    records = [r for r in meta.get("tasks", []) if isinstance(r, dict)] if isinstance(meta.get("tasks"), list) else []
    if records and rng.random() < 0.7:
        target, key = rng.choice(records), rng.choice(NULLABLE_RECORD)
    else:
        target, key = meta, rng.choice(NULLABLE_META)
    if rng.random() < 0.6:
        target[key] = None
    else:
        target.pop(key, None)
    f.metadata["meta"] = json.dumps(meta)


def _mutate_metadata(f: V2File, rng: random.Random) -> None:
    md = f.metadata
    op = rng.choice(("delete", "unknown", "value", "version", "checksums", "hmac"))
    key = rng.choice(sorted(md))
    if op == "delete":
        md.pop(key)
    elif op == "unknown":
        md[rng.choice(("signature", "extra", "Meta", "meta "))] = "x"
    elif op == "value":
        md[key] = rng.choice([1, None, [], {}, "", "x" * 100, True])
    elif op == "version":
        md[rng.choice(("version", "format"))] = rng.choice(
            ["1", "3", "02", " 2", "2.0", "wsn-snapshot", "wsn-checkpoint", ""]
        )
    elif op == "checksums":
        table = _json_or(md.get("checksums"), {})
        if isinstance(table, dict) and table and rng.random() < 0.6:
            name = rng.choice(sorted(table))
            table[name if rng.random() < 0.5 else name + "x"] = rng.choice(["0" * 64, 7, None, "", []])
            md["checksums"] = json.dumps(table)
        else:
            md["checksums"] = rng.choice(["", "[]", "{", '{"masks": "x", "masks": "y"}', "null", "1e400"])
    else:
        md["hmac"] = rng.choice(["0" * 64, "", "x"])


def _mutate_entry(f: V2File, rng: random.Random):
    i = rng.randrange(len(f.tensors))
    name, dtype, shape, data = f.tensors[i]
    op = rng.choice(("dtype", "dtype", "shape", "shape", "shape", "offsets", "offsets", "keys"))
    if op == "dtype":
        size = np.dtype(DTYPES[dtype]).itemsize if isinstance(dtype, str) and dtype in DTYPES else 0
        same = [d for d in DTYPES if d != dtype and np.dtype(DTYPES[d]).itemsize == size]
        value = rng.choice(same) if same and rng.random() < 0.5 else rng.choice(list(DTYPES) + OTHER_DTYPES)
        return [(i, "dtype", value)]
    if op == "shape":
        n = math.prod(shape) if all(type(d) is int for d in shape) else 0
        choices = [
            list(reversed(shape)),
            [n],
            [1, *shape],
            shape[:-1],
            [*shape, 1],
            [0],
            [-1],
            [2**47],
            [2**48],
            [1.5],
            "3",
            [[2]],
            [1] * 9,
            [n, 0],
            [2**31, 2**31],
            [],
        ]
        if n and n % 2 == 0:
            choices += [[2, n // 2], [n // 2, 2]]
        return [(i, "shape", rng.choice(choices))]
    if op == "offsets":
        total = sum(len(t[3]) for t in f.tensors)
        start = sum(len(t[3]) for t in f.tensors[:i])
        end = start + len(data)
        value = rng.choice(
            [
                [end, start],
                [start + 1, end + 1],
                [start - 1, end - 1],
                [start, end + 8],
                [0, total],
                [start, end, end],
                [start],
                [float(start), end],
                [-8, end - 8],
                [start, 2**64],
                [str(start), end],
                None,
                [start, start],
            ]
        )
        if isinstance(value, list) and any(type(v) is int and v < 0 for v in value):
            value = [0, len(data)]  # overlapping the first tensor
        edits = [(i, "data_offsets", value)]
        if len(f.tensors) > 1 and rng.random() < 0.3:  # swap with another entry: still back to back, wrong order
            j = rng.randrange(len(f.tensors))
            a = [sum(len(t[3]) for t in f.tensors[:j]), sum(len(t[3]) for t in f.tensors[: j + 1])]
            edits = [(i, "data_offsets", a), (j, "data_offsets", [start, end])]
        return edits
    return (
        [(i, rng.choice(("shape", "dtype", "data_offsets", "extra")), _DELETE if rng.random() < 0.5 else 1)]
        if rng.random() < 0.8
        else [(i, None, rng.choice([[], "x", None, 1]))]
    )


def _mutate_tensors(f: V2File, rng: random.Random) -> None:
    op = rng.choice(("drop", "add", "rename", "values", "values", "resize"))
    i = rng.randrange(len(f.tensors))
    name, dtype, shape, data = f.tensors[i]
    if op == "drop" and len(f.tensors) > 1:
        f.tensors.pop(i)
    elif op == "add":
        dt = rng.choice(list(DTYPES))
        n = rng.choice([0, 1, 2, 8, 20, 64])
        f.tensors.insert(
            rng.randrange(len(f.tensors) + 1),
            [rng.choice(TENSOR_NAMES), dt, [n], bytes(n * np.dtype(DTYPES[dt]).itemsize)],
        )
    elif op == "rename":
        f.tensors[i][0] = rng.choice(
            TENSOR_NAMES + [name.replace("1", "2"), name.upper(), name + "/x", name.split("/")[0]]
        )
    elif op == "resize" and isinstance(dtype, str) and dtype in DTYPES:  # a consistent tensor of another shape
        size = np.dtype(DTYPES[dtype]).itemsize
        new = rng.choice([[1], [2, 2], [*shape[:-1], max(shape[-1] - 1, 0)] if shape else [0], [*shape, 2]])
        f.tensors[i][2] = new
        f.tensors[i][3] = (data * 2)[: math.prod(new) * size].ljust(math.prod(new) * size, b"\0")
    elif isinstance(dtype, str) and dtype in DTYPES and data:
        arr = np.frombuffer(data, DTYPES[dtype]).copy()
        k = rng.randrange(len(arr))
        if arr.dtype.kind == "f":
            arr[k] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 1e-45])
        elif arr.dtype.kind == "u":
            arr[k] = rng.choice([0, 1, 2, 7, 255])
        else:
            arr[k] = rng.choice([0, -1, 2**31 - 1, int(arr[(k + 1) % len(arr)]), len(arr), -(2**62)])
        f.tensors[i][3] = arr.tobytes()


def _mutate_masks(f: V2File, rng: random.Random) -> None:
    masks = [t for t in f.tensors if t[0] == "masks"]
    if not masks:
        return
    blob = masks[0][3]
    new = None
    if rng.random() < 0.7:
        try:
            from tests.formats.mutators import mutate_structure

            _, new = mutate_structure(blob, rng)
        except Exception:  # noqa: BLE001 - not importable, or the blob is no longer a valid .wsnm
            new = None
    if new is None:
        new = mutate_bytes(blob, rng)
    masks[0][3] = bytes(new)
    masks[0][2] = [len(new)]


def _header_edit(rng: random.Random):
    op = rng.choice(("duplicate", "raw", "trailing", "length", "bytes"))
    if op == "duplicate":
        return "duplicate", lambda t: t.replace('{"', '{"masks": {}, "', 1)
    if op == "raw":
        raw = rng.choice(RAW_JSON)
        return "raw", lambda t: t.replace('"shape": [', f'"shape": [{raw}, ', 1)
    if op == "trailing":
        return "trailing", lambda t: t + rng.choice(["x", "{}", "\x00", "]"])
    if op == "length":
        return "length", None
    return "bytes", lambda t: mutate_bytes(t.encode("utf-8", "surrogatepass"), rng).decode("utf-8", "replace")


def mutate_v2(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    """(kind, mutant) of a valid version-2 checkpoint: 1 to 3 structure-aware changes, checksums
    recomputed 90% of the time."""
    f = parse(raw)
    kinds, entry_edits, header_edit, length = [], [], None, False
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(
            (
                "meta",
                "meta",
                "meta",
                "meta",
                "metadata",
                "entry",
                "entry",
                "entry",
                "tensors",
                "tensors",
                "masks",
                "header",
                "path",
                "nullable",
            )
        )
        kinds.append(kind)
        if kind == "meta":
            _mutate_meta(f, rng)
        elif kind == "metadata":
            _mutate_metadata(f, rng)
        elif kind == "entry" and f.tensors:
            entry_edits += _mutate_entry(f, rng)
        elif kind == "tensors" and f.tensors:
            _mutate_tensors(f, rng)
        elif kind == "masks":
            _mutate_masks(f, rng)
        elif kind == "header":
            what, header_edit = _header_edit(rng)
            length = what == "length"
        elif kind == "path":
            _mutate_path(f, rng)
        elif kind == "nullable":
            _mutate_nullable(f, rng)
    entry_edits = [e for e in entry_edits if e[0] < len(f.tensors)]
    recompute, restamp = rng.random() < 0.9, rng.random() < 0.75
    out = serialize(f, recompute=recompute, entry_edits=entry_edits, header_edit=header_edit, restamp=restamp)
    if length:  # the u64 header length, off by a little or a lot
        (n,) = struct.unpack_from("<Q", out)
        out = struct.pack("<Q", max(0, rng.choice([n - 1, n + 1, n - 8, n + 8, 0, 2, len(out), 2**63]))) + out[8:]
    return "+".join(sorted(set(kinds))), out
