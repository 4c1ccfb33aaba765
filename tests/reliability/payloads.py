"""A tiny valid checkpoint and ways to rewrite its payload (shared by the untrusted-file tests and fuzzers)."""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path

import torch


def make_tiny_checkpoint(path: Path, tasks=(1, 2), hidden=(8,)) -> Path:
    """split-digits, MLP 64-8, tasks learned for one epoch, in-process (threads restored after)."""
    from wsncli.engine.lifecycle.learn import TaskRequest, learn_task

    threads = torch.get_num_threads()
    try:
        for task in tasks:
            learn_task(TaskRequest(ckpt=Path(path), task=task, hidden=tuple(hidden), epochs=1, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return Path(path)


def load_payload(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def fix_checksums(payload: dict) -> dict:
    """Recompute the checksums a writer would (so a mutation reaches the checks behind them)."""
    from wsncli.engine.store.checkpoint import canonical_json, tensor_digest
    from wsncli.engine.store.schema import check_plain
    from wsncli.errors import CheckpointError

    if isinstance(payload.get("checksums"), dict) and isinstance(payload.get("meta"), dict):
        try:
            check_plain(payload["meta"])  # json.dumps of a shared-list bomb would never finish
            payload["checksums"]["meta"] = hashlib.sha256(canonical_json(payload["meta"])).hexdigest()
        except (CheckpointError, TypeError, ValueError, RecursionError, OverflowError):
            pass
    tensors, sums = payload.get("tensors"), payload.get("checksums", {})
    if isinstance(tensors, dict) and isinstance(sums, dict) and isinstance(sums.get("tensors"), dict):
        for name, t in tensors.items():
            if isinstance(t, torch.Tensor) and t.numel() < 1_000_000:
                try:
                    sums["tensors"][name] = tensor_digest(t)
                except (TypeError, RuntimeError):
                    pass
    return payload


def dump_payload(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def rewritten(valid: bytes, change, fix: bool = True) -> bytes:
    """The bytes of `valid` after change(payload) (and fixed checksums)."""
    payload = copy.deepcopy(load_payload(valid))
    change(payload)
    return dump_payload(fix_checksums(payload) if fix else payload)
