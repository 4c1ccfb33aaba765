"""Valid checkpoints to attack, and ways to rewrite them (shared by the untrusted-file tests and fuzzers).

wsn writes version 2 (safetensors) only, so version-1 files (a `torch.save` ZIP) are built from the
checked-in golden files written by wsn 0.1.1: their payload is loaded, changed, and saved again with
`torch.save`, checksums recomputed as 0.1.1 computed them.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path

import torch

GOLDEN_V1 = Path(__file__).resolve().parents[1] / "golden" / "checkpoints"


def golden_v1(name: str = "v1-digits-wsn.pt") -> bytes:
    """A version-1 checkpoint by wsn 0.1.1 (split-digits, MLP 64-20-20, tasks 2 then 1)."""
    return (GOLDEN_V1 / name).read_bytes()


def make_tiny_checkpoint(path: Path, tasks=(1, 2), hidden=(8,)) -> Path:
    """A version-2 split-digits checkpoint, MLP 64-8, tasks learned for one epoch, in-process
    (torch's thread count restored after)."""
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    threads = torch.get_num_threads()
    try:
        for task in tasks:
            learn_task(TaskRequest(ckpt=Path(path), task=task, hidden=tuple(hidden), epochs=1, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return Path(path)


# -- version 1 ------------------------------------------------------------------------------------
def load_payload(data: bytes) -> dict:
    """The payload dict of a version-1 file."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def v1_meta_digest(meta) -> str:
    """The metadata checksum of version 1: sha256 of the canonical JSON."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()).hexdigest()


def fix_checksums(payload: dict) -> dict:
    """Recompute the checksums a version-1 writer would (so a mutation reaches the checks behind them)."""
    from wsncli.engine.store.container import tensor_digest
    from wsncli.engine.store.legacy_v1 import check_plain
    from wsncli.errors import CheckpointError

    if isinstance(payload.get("checksums"), dict) and isinstance(payload.get("meta"), dict):
        try:
            check_plain(payload["meta"])  # json.dumps of a shared-list bomb would never finish
            payload["checksums"]["meta"] = v1_meta_digest(payload["meta"])
        except (CheckpointError, TypeError, ValueError, RecursionError, OverflowError):
            pass
    tensors, sums = payload.get("tensors"), payload.get("checksums", {})
    if isinstance(tensors, dict) and isinstance(sums, dict) and isinstance(sums.get("tensors"), dict):
        for name, t in tensors.items():
            if isinstance(t, torch.Tensor) and t.numel() < 1_000_000:
                try:
                    sums["tensors"][name] = tensor_digest(t.contiguous().numpy(), legacy_v1=True)
                except (TypeError, RuntimeError):
                    pass
    return payload


def dump_payload(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def rewritten(valid: bytes, change, fix: bool = True) -> bytes:
    """The version-1 bytes of `valid` after change(payload) (and fixed checksums)."""
    payload = copy.deepcopy(load_payload(valid))
    change(payload)
    return dump_payload(fix_checksums(payload) if fix else payload)
