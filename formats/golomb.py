"""Golomb codes of gap lengths, stored as three separate bit streams so numpy can decode them.

For a bit sequence of length n with k occurrences of its less probable symbol (LPS), gap i is the
number of more-probable symbols before LPS i (after LPS i-1). With parameter m >= 1, gap g is
q = g // m and r = g % m, written as:
  unary stream   q one-bits then a zero-bit (U = sum(q) + k bits; quotients = gaps between zeros)
  fixed stream   for m >= 2: the first b-1 bits of r's truncated-binary code (b = ceil(log2 m))
  extra stream   one more bit for each r >= u = 2**b - m (the last bit of the b-bit code r + u)
Decoding: v = fixed value; r = v if v < u else 2*v + extra - u.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from formats.bitio import fixed_width_bits, fixed_width_values
from formats.errors import FormatError


def remainder_layout(m: int) -> tuple[int, int]:
    """(fixed bits per gap, truncated-binary cutoff u) for parameter m."""
    if m == 1:
        return 0, 0
    b = (m - 1).bit_length()
    return b - 1, (1 << b) - m


def best_parameter(k: int, n: int) -> int:
    """Golomb parameter for k LPS in n bits: m = ceil(log(1 + t) / -log(t)), t = 1 - k/n."""
    if k == 0 or 2 * k >= n:
        return 1
    theta = 1.0 - k / n
    m = math.ceil(math.log1p(theta) / -math.log(theta))
    return max(1, min(m, n))


@dataclass
class GolombCode:
    """The three streams (uint8 0/1 arrays) of one coded sequence."""

    unary: np.ndarray
    fixed: np.ndarray
    extra: np.ndarray

    @property
    def bits(self) -> int:
        return self.unary.size + self.fixed.size + self.extra.size


def gaps_of(positions: np.ndarray) -> np.ndarray:
    """Gap lengths before each LPS, from their sorted positions."""
    return np.diff(positions, prepend=-1) - 1


def encode_gaps(gaps: np.ndarray, m: int) -> GolombCode:
    """Golomb-code int64 gap lengths with parameter m into separated streams."""
    k = gaps.size
    q, r = np.divmod(gaps, m)
    unary = np.ones(int(q.sum()) + k, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0
    width, cutoff = remainder_layout(m)
    if m == 1:
        return GolombCode(unary, np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    long = r >= cutoff
    shifted = r + cutoff
    fixed_values = np.where(long, shifted >> 1, r)
    extra = (shifted[long] & 1).astype(np.uint8)
    return GolombCode(unary, fixed_width_bits(fixed_values, width), extra)


def coded_size(gaps: np.ndarray, m: int) -> int:
    """Bits encode_gaps would produce, without building the streams."""
    width, cutoff = remainder_layout(m)
    size = int((gaps // m).sum()) + gaps.size * (1 + width)
    if m > 1:
        size += int(np.count_nonzero(gaps % m >= cutoff))
    return size


def decode_positions(
    bits: np.ndarray, start: int, unary_bits: int, k: int, m: int, n: int, what: str
) -> tuple[np.ndarray, int]:
    """Read the three streams from 0/1 array `bits` at `start`; returns (LPS positions, end)."""
    if unary_bits > bits.size - start:
        raise FormatError(f"{what}: unary stream of {unary_bits} bits runs past the end of the stream")
    unary = bits[start : start + unary_bits]
    zeros = np.flatnonzero(unary == 0)
    if zeros.size != k:
        raise FormatError(f"{what}: unary stream has {zeros.size} zero bits, expected {k}")
    if k and zeros[-1] != unary_bits - 1:
        raise FormatError(f"{what}: unary stream does not end with a zero bit")
    q = gaps_of(zeros)
    pos = start + unary_bits
    width, cutoff = remainder_layout(m)
    if k * width > bits.size - pos:
        raise FormatError(f"{what}: fixed stream of {k * width} bits runs past the end of the stream")
    r = fixed_width_values(bits[pos : pos + k * width], width, k)
    pos += k * width
    if m > 1:
        long = r >= cutoff
        n_extra = int(np.count_nonzero(long))
        if n_extra > bits.size - pos:
            raise FormatError(f"{what}: extra stream of {n_extra} bits runs past the end of the stream")
        r[long] = 2 * r[long] + bits[pos : pos + n_extra] - cutoff
        pos += n_extra
    if k and int(q.max()) > n // m:
        raise FormatError(f"{what}: a gap of over {int(q.max()) * m} bits in a sequence of {n}")
    positions = np.cumsum(q * m + r + 1) - 1
    if k and int(positions[-1]) >= n:
        raise FormatError(f"{what}: gaps add up to position {int(positions[-1])}, beyond {n} bits")
    return positions, pos
