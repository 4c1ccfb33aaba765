"""Mask statistics: empirical entropy bounds (independent and 3-context conditional)."""

from __future__ import annotations

import math

import numpy as np

N_CONTEXTS = 3  # 0: never used before, 1: used by an earlier task but not the previous, 2: previous


def entropy_bits(ones: int, n: int) -> float:
    """n * H(ones/n): the empirical entropy of a bit sequence of length n with `ones` set bits."""
    if ones <= 0 or ones >= n:
        return 0.0
    p = ones / n
    return -n * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


def mask_entropy_bits(mask: np.ndarray) -> float:
    """Independent bound for one mask: n * H(density)."""
    return entropy_bits(int(np.count_nonzero(mask)), mask.size)


def context_ids(union: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """uint8 context per weight from the OR of earlier masks and the previous mask (prev <= union)."""
    return union.view(np.uint8) + prev.view(np.uint8)


def context_counts(mask: np.ndarray, ctx: np.ndarray | None) -> list[tuple[int, int]]:
    """(n_c, ones_c) for contexts 0..2; ctx None means the first task (everything in context 0)."""
    if ctx is None:
        return [(mask.size, int(np.count_nonzero(mask))), (0, 0), (0, 0)]
    both = np.bincount(ctx + N_CONTEXTS * mask.view(np.uint8), minlength=2 * N_CONTEXTS)
    return [(int(both[c] + both[c + N_CONTEXTS]), int(both[c + N_CONTEXTS])) for c in range(N_CONTEXTS)]


def conditional_entropy_bits(masks: list[np.ndarray]) -> list[float]:
    """Per task: sum over the 3 contexts of n_c * H(ones_c / n_c), masks in learning order."""
    out: list[float] = []
    union = prev = None
    for mask in masks:
        ctx = None if prev is None else context_ids(union, prev)
        out.append(sum(entropy_bits(k, n) for n, k in context_counts(mask, ctx)))
        union = mask.copy() if union is None else union | mask
        prev = mask
    return out
