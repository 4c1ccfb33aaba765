"""Deterministic splits: fixed seeds from (benchmark, task, purpose), never from a training seed."""

from __future__ import annotations

import hashlib

import numpy as np


def split_seed(benchmark: str, task: int, purpose: str) -> int:
    """A fixed 64-bit seed from (benchmark, task id, purpose); never depends on a training seed."""
    digest = hashlib.sha256(f"wsn:{benchmark}:{task}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) sorted index arrays; each class holds out round(fraction*n) but keeps >= 1."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = min(int(np.floor(fraction * len(idx) + 0.5)), len(idx) - 1)
        if n > 0:
            held.append(rng.permutation(idx)[:n])
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def pmnist_permutation(task: int, size: int = 784) -> np.ndarray:
    """Task `task`'s fixed pixel permutation: numpy default_rng(task).permutation(size)."""
    return np.random.default_rng(task).permutation(size)
