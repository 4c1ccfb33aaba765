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


def grouped_stratified_split(y: np.ndarray, x: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) sorted index arrays; per class at most round(fraction*n) samples are held out (at
    least one kept), and identical samples of `x` of one class (exact duplicates) land on one side.

    Per class, the distinct samples are shuffled (numpy default_rng(seed)) and each is held out, with
    all its copies, when it still fits the class's share: with single samples left, the share is exact."""
    rng = np.random.default_rng(seed)
    _, group = np.unique(x.reshape(len(x), -1), axis=0, return_inverse=True)  # (N,) id of each distinct sample
    group = group.reshape(-1)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        want = min(int(np.floor(fraction * len(idx) + 0.5)), len(idx) - 1)
        members: dict[int, list[int]] = {}
        for i in idx.tolist():
            members.setdefault(int(group[i]), []).append(i)
        taken: list[int] = []
        for g in rng.permutation(sorted(members)).tolist():
            if len(taken) + len(members[g]) <= want:
                taken.extend(members[g])
        held.append(np.asarray(taken, dtype=np.int64))
    held_idx = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly min(n, len(y)) samples, each class in proportion (largest remainders,
    ties to the smaller class label), drawn with numpy default_rng(seed)."""
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    share = counts * n / len(y)
    quota = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - quota), kind="stable")  # largest remainders first
    quota[order[: n - int(quota.sum())]] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))
