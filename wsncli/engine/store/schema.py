"""Structural checks of an untrusted checkpoint payload, run before any of it is used.

A checksum only detects accidents: whoever writes a file can recompute it. So every value the rest of
wsn reads from `meta`, and every tensor, is checked here for type, range and size first; afterwards
code may index records and build the network without guarding each access. All failures raise
CheckpointError with a short reason; `load_checkpoint` prefixes the file's name.
"""

from __future__ import annotations

import math
import re

import torch

from wsncli.engine.data.registry import BENCHMARKS
from wsncli.engine.limits import MAX_CLASSES, MAX_DEPTH, MAX_INPUTS, MAX_NODES, MAX_SEED, MAX_STR, MAX_TASK_ID, METHODS
from wsncli.engine.nn.models import ARCHS
from wsncli.errors import CheckpointError

TENSOR_DTYPES = (torch.float32, torch.int64, torch.uint8)
_HEX64 = re.compile(r"[0-9a-f]{64}")
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


# -- typed field readers ----------------------------------------------------------------------
def _int(d: dict, key: str, at: str, lo: int, hi: int, optional: bool = False) -> None:
    if optional and d.get(key) is None:
        return
    v = d.get(key, _MISSING)
    if v is _MISSING:
        raise CheckpointError(f"{at}.{key} is missing")
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise CheckpointError(f"{at}.{key} must be an integer in [{lo}, {hi}], got {_short(v)}")


def _float(d: dict, key: str, at: str, lo: float, hi: float, optional: bool = False, lo_open: bool = False) -> None:
    if optional and d.get(key) is None:
        return
    v = d.get(key, _MISSING)
    if v is _MISSING:
        raise CheckpointError(f"{at}.{key} is missing")
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    ok = ok and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        raise CheckpointError(f"{at}.{key} must be a finite number in {'(' if lo_open else '['}{lo}, {hi}], got {_short(v)}")


def _str(d: dict, key: str, at: str, choices=None, pattern: re.Pattern | None = None, optional: bool = False) -> None:
    if optional and d.get(key) is None:
        return
    v = d.get(key, _MISSING)
    if v is _MISSING:
        raise CheckpointError(f"{at}.{key} is missing")
    if not isinstance(v, str) or "\x00" in v:
        raise CheckpointError(f"{at}.{key} must be a string, got {_short(v)}")
    if choices is not None and v not in choices:
        raise CheckpointError(f"{at}.{key} must be one of {', '.join(choices)}, got {_short(v)}")
    if pattern is not None and not pattern.fullmatch(v):
        raise CheckpointError(f"{at}.{key} must be a sha256 hex digest, got {_short(v)}")


def _int_list(d: dict, key: str, at: str, lo: int, hi: int, min_len: int, max_len: int) -> list:
    v = d.get(key, _MISSING)
    if not isinstance(v, list) or not min_len <= len(v) <= max_len:
        raise CheckpointError(f"{at}.{key} must be a list of {min_len}..{max_len} integers, got {_short(v)}")
    for i in range(len(v)):
        _int({key: v[i]}, key, f"{at}", lo, hi)
    return v


_MISSING = object()


def check_meta(meta: dict) -> None:
    """Every field of `meta` wsn reads, and every task record (docs/CHECKPOINT.md section 3)."""
    check_plain(meta)
    _str(meta, "benchmark", "meta", BENCHMARKS)
    _int(meta, "n_tasks", "meta", 1, MAX_TASK_ID, optional=True)
    _int(meta, "seed", "meta", -MAX_SEED + 1, MAX_SEED - 1)
    _str(meta, "method", "meta", METHODS)
    _str(meta, "data_root", "meta", optional=True)
    _str(meta, "wsn_version", "meta", optional=True)
    _float(meta, "default_capacity", "meta", 0.0, 1.0, optional=True, lo_open=True)
    model = meta.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"meta.model must be a dict, got {_short(model)}")
    _str(model, "arch", "meta.model", ARCHS)
    shape = _int_list(model, "input_shape", "meta.model", 1, 65536, 1, 3)
    if math.prod(shape) > MAX_INPUTS:
        raise CheckpointError(f"meta.model.input_shape {shape} has more than {MAX_INPUTS} values per sample")
    _int_list(model, "hidden", "meta.model", 1, 65536, 1, 64)
    tasks = meta.get("tasks")
    if not isinstance(tasks, list):
        raise CheckpointError(f"meta.tasks must be a list, got {_short(tasks)}")
    seen: set[int] = set()
    for i, record in enumerate(tasks):
        at = f"meta.tasks[{i}]"
        check_record(record, at, meta["method"], i + 1)
        if record["task"] in seen:
            raise CheckpointError(f"{at}.task {record['task']} is learned twice")
        seen.add(record["task"])


def check_record(record, at: str, method: str, order: int) -> None:
    """One task record: the fields eval, inspect and train-task read, typed and in range."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{at} must be a dict, got {_short(record)}")
    _int(record, "task", at, 1, MAX_TASK_ID)
    _int(record, "order", at, order, order)
    _int(record, "n_classes", at, 1, MAX_CLASSES)
    if "classes" in record:
        _int_list(record, "classes", at, -_INT64, _INT64 - 1, record["n_classes"], record["n_classes"])
    _str(record, "method", at, (method,))
    _float(record, "capacity", at, 0.0, 1.0, optional=method != "wsn", lo_open=True)
    _float(record, "accuracy", at, 0.0, 1.0)
    _float(record, "val_accuracy", at, 0.0, 1.0, optional=True)
    for key in ("outputs_digest", "subnet_digest", "data_digest"):
        _str(record, key, at, pattern=_HEX64)
    for key, lo in (("n_test", 1), ("epochs", 1), ("batch_size", 1), ("best_epoch", 0)):
        _int(record, key, at, lo, _INT64 - 1, optional=True)
    _int(record, "seed", at, -MAX_SEED + 1, MAX_SEED - 1, optional=True)
    _float(record, "lr", at, 0.0, math.inf, optional=True, lo_open=True)
    _float(record, "train_seconds", at, 0.0, math.inf, optional=True)
    _str(record, "device", at, optional=True)
    _str(record, "learned_at", at, optional=True)
    for key, kind in (("kept_per_layer", int), ("mask_density", float)):
        table = record.get(key)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise CheckpointError(f"{at}.{key} must be a dict, got {_short(table)}")
        for name in table:
            if kind is int:
                _int(table, name, f"{at}.{key}", 0, _INT64 - 1)
            else:
                _float(table, name, f"{at}.{key}", 0.0, 1.0)


def check_tensors(tensors, sums, file_bytes: int) -> None:
    """The tensor table: plain contiguous CPU tensors of allowed dtypes, whose bytes the file holds
    (no expanded or shared views that would make hashing or copying allocate more than the file);
    and a checksum table of names to sha256 hex strings."""
    if not isinstance(tensors, dict) or not isinstance(sums, dict) or not isinstance(sums.get("tensors"), dict):
        raise CheckpointError("malformed checkpoint (tensors or checksums missing)")
    if not isinstance(sums.get("meta"), str):
        raise CheckpointError("malformed checkpoint (meta checksum missing)")
    total = 0
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(f"tensor name {_short(name)} is not a string")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensor {name[:80]!r} is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided or t.is_quantized or t.is_nested or t.device.type != "cpu" or t.dtype not in TENSOR_DTYPES:
            raise CheckpointError(f"tensor {name[:80]!r} is {t.dtype} {t.layout} on {t.device}; only dense CPU float32, int64 and uint8 are allowed")
        nbytes = t.numel() * t.element_size()
        if not t.is_contiguous() or nbytes > t.untyped_storage().nbytes() - t.storage_offset() * t.element_size():
            raise CheckpointError(f"tensor {name[:80]!r} is not a contiguous view of its own data")
        total += nbytes
        if total > file_bytes:
            raise CheckpointError(f"tensors add up to more bytes than the file holds ({file_bytes})")
    for name, digest in sums["tensors"].items():
        if not isinstance(name, str) or not isinstance(digest, str):
            raise CheckpointError(f"checksum entry {_short(name)} is not a string pair")
