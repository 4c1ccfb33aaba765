"""The record digest (format 3): what decides which data a task is measured on, what its labels mean,
and what eval compares, hashed per task record (docs/CHECKPOINT.md section 6).

A record-only edit (a benchmark, a task's classes, its transform, a recorded digest) changes no
parameter, so the subnetwork digest cannot see it; the record digest does, and eval reports the
record as damaged (exit 1), never as forget-free. Like every checksum it detects accidents and
careless edits; a deliberate rewrite is what the HMAC signature is for.
"""

from __future__ import annotations

import hashlib
import json
import struct

import msgspec

from wsncli.engine.store.schema import CheckpointMeta, TaskRecord

RECORD_DIGEST_NAME = "wsn-record-digest 1"
META_FIELDS = ("benchmark", "n_tasks", "image_size", "channels", "method")
TASK_FIELDS = (
    "task",
    "order",
    "n_classes",
    "classes",
    "capacity",
    "accuracy",
    "n_test",
    "preprocess",
    "digest_version",
    "subnet_digest",
    "outputs_digest",
    "data_digest",
    "accuracy_row",
    "input_dtype",
)


def canonical(value) -> str:
    """One value as text: null, true/false, decimal integers, floats as `f` + the 16 hex digits of
    their IEEE-754 binary64 bits (big-endian), strings as ASCII JSON, lists `[a,b]`, objects
    `{"key":value,...}` with keys sorted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "f" + struct.pack(">d", value).hex()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, msgspec.Struct):
        value = msgspec.structs.asdict(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=True)}:{canonical(value[k])}" for k in sorted(value)) + "}"
    raise TypeError(f"no canonical form for {type(value).__name__}")


def record_digest(meta: CheckpointMeta, record: TaskRecord) -> str:
    """sha256 of the lines `wsn-record-digest 1`, `<field>=<canonical value>` for META_FIELDS of the
    checkpoint, then `task.<field>=<canonical value>` for TASK_FIELDS of the record, joined by `\\n`."""
    lines = [RECORD_DIGEST_NAME]
    lines += [f"{name}={canonical(getattr(meta, name))}" for name in META_FIELDS]
    lines += [f"task.{name}={canonical(getattr(record, name))}" for name in TASK_FIELDS]
    return hashlib.sha256("\n".join(lines).encode("ascii")).hexdigest()


def damaged_records(meta: CheckpointMeta) -> list[int]:
    """Tasks whose recorded record digest fails (records without one, formats 1 and 2, are not checked)."""
    return [r.task for r in meta.tasks if r.record_digest is not None and r.record_digest != record_digest(meta, r)]


def stamp_records(meta: CheckpointMeta) -> None:
    """Give every record without a record digest its digest (when a file is written as format 3)."""
    for record in meta.tasks:
        if record.record_digest is None:
            record.record_digest = record_digest(meta, record)
