"""Canonical Huffman codes over byte symbols, stored as two short lists (count, symbol).

A table is `count[L]` = how many symbols have a code of L bits (L = 1..max) and `symbol` = the
symbols in canonical order (by code length, then by the order the list gives them). Codes are
assigned as in DEFLATE, which is what `bitarray.util.canonical_decode` expects.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
from bitarray import bitarray, frozenbitarray
from bitarray.util import canonical_decode, canonical_huffman, int2ba

from formats.bitio import ByteReader
from formats.errors import FormatError

MAX_CODE_BITS = 31  # the longest code canonical_decode handles


@dataclass(frozen=True)
class HuffmanTable:
    """A canonical Huffman code: count per length (count[0] == 0) and symbols in canonical order."""

    count: tuple[int, ...]
    symbol: tuple[int, ...]

    @property
    def max_bits(self) -> int:
        return len(self.count) - 1

    @cached_property
    def lengths(self) -> np.ndarray:
        """Code length of every symbol 0..255 (0 = not in the code); read-only."""
        out = np.zeros(256, dtype=np.int64)
        i = 0
        for bits, n in enumerate(self.count):
            for s in self.symbol[i : i + n]:
                out[s] = bits
            i += n
        out.flags.writeable = False
        return out

    @cached_property
    def codes(self) -> dict[int, frozenbitarray]:
        """Symbol -> code bits, DEFLATE-style canonical assignment."""
        out: dict[int, frozenbitarray] = {}
        code = i = 0
        for bits in range(1, len(self.count)):
            for _ in range(self.count[bits]):
                out[self.symbol[i]] = frozenbitarray(int2ba(code, length=bits))
                code += 1
                i += 1
            code <<= 1
        return out

    def to_bytes(self) -> bytes:
        """u8 max code length L, L bytes count[1..L], then one byte per symbol in canonical order."""
        return bytes([self.max_bits, *self.count[1:], *self.symbol])


def table_from_frequencies(freq: np.ndarray) -> HuffmanTable:
    """Canonical Huffman code for symbol counts `freq` (index = symbol), via bitarray, <= 31 bits."""
    freq_map = {int(s): int(f) for s, f in enumerate(freq) if f > 0}
    if not freq_map:
        return HuffmanTable((0,), ())
    while True:
        _, count, symbol = canonical_huffman(freq_map)
        if len(count) - 1 <= MAX_CODE_BITS:
            return HuffmanTable(tuple(count), tuple(symbol))
        freq_map = {s: max(1, f >> 1) for s, f in freq_map.items()}  # flatten until short enough


def table_from_lengths(lengths: list[int]) -> HuffmanTable:
    """Canonical table from code lengths per symbol (0 = absent); symbols of equal length ascend."""
    order = sorted((bits, s) for s, bits in enumerate(lengths) if bits > 0)
    max_bits = order[-1][0] if order else 0
    count = [0] * (max_bits + 1)
    for bits, _ in order:
        count[bits] += 1
    return HuffmanTable(tuple(count), tuple(s for _, s in order))


def read_table(reader: ByteReader, alphabet: int) -> HuffmanTable:
    """Parse and validate a table written by HuffmanTable.to_bytes."""
    where = f"{reader.what}: Huffman table"
    max_bits = reader.u8("Huffman table max code length")
    if max_bits > MAX_CODE_BITS:
        raise FormatError(f"{where}: max code length {max_bits} > {MAX_CODE_BITS}")
    count = (0, *reader.take(max_bits, "Huffman table counts"))
    if max_bits and count[max_bits] == 0:
        raise FormatError(f"{where}: no code has the max length {max_bits}")
    kraft = 0
    for bits in range(1, max_bits + 1):
        if count[bits] > (1 << bits):
            raise FormatError(f"{where}: {count[bits]} codes of length {bits} > {1 << bits}")
        kraft += count[bits] << (max_bits - bits)
    if kraft > (1 << max_bits):
        raise FormatError(f"{where}: code lengths are over-subscribed (Kraft sum > 1)")
    total = sum(count)
    symbol = tuple(reader.take(total, "Huffman table symbols"))
    if len(set(symbol)) != total:
        raise FormatError(f"{where}: a symbol is listed twice")
    if symbol and max(symbol) >= alphabet:
        raise FormatError(f"{where}: symbol {max(symbol)} outside the alphabet 0..{alphabet - 1}")
    return HuffmanTable(count, symbol)


def encode_symbols(table: HuffmanTable, symbols: np.ndarray) -> bitarray:
    """Concatenated codes of uint8 `symbols` (bitarray's C encoder)."""
    out = bitarray()
    if symbols.size:
        out.encode(table.codes, symbols.astype(np.uint8, copy=False).tobytes())
    return out


def decode_symbols(code: bitarray, table: HuffmanTable, n: int, what: str) -> tuple[np.ndarray, int]:
    """Decode exactly n symbols from the start of `code`; returns (uint8 symbols, bits used)."""
    if n == 0:
        return np.zeros(0, dtype=np.uint8), 0
    if not table.symbol:
        raise FormatError(f"{what}: empty Huffman table for {n} symbols")
    shortest = next(bits for bits, count in enumerate(table.count) if count)
    if n * shortest > len(code):  # checked before the n-symbol output is allocated
        raise FormatError(
            f"{what}: {n} symbols need at least {n * shortest} bits of Huffman code, the stream has {len(code)}"
        )
    try:
        symbols = np.fromiter(canonical_decode(code, list(table.count), list(table.symbol)), dtype=np.uint8, count=n)
    except ValueError:  # bitarray or numpy: the bits ran out, or an unassigned code came up
        raise FormatError(f"{what}: Huffman code ends or uses an unassigned code before {n} symbols") from None
    return symbols, int(table.lengths[symbols].sum())


@cache
def block8_table(q: int) -> HuffmanTable:
    """The fixed code for 8-bit blocks of i.i.d. bits with P(1) = q/64 (used by the context codec).

    Weights are exact integers w(s) = q**ones(s) * (64-q)**(8-ones(s)). Huffman: repeatedly merge
    the two nodes of smallest (weight, id), leaves having id = symbol 0..255 and merged nodes the
    ids 256, 257, ... in creation order; a symbol's code length is its leaf depth.
    """
    popcount = [bin(s).count("1") for s in range(256)]
    heap = [(q ** popcount[s] * (64 - q) ** (8 - popcount[s]), s) for s in range(256)]
    heapq.heapify(heap)
    parent: dict[int, int] = {}
    next_id = 256
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = next_id
        heapq.heappush(heap, (w1 + w2, next_id))
        next_id += 1
    depth = {next_id - 1: 0}
    for node in range(next_id - 2, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return table_from_lengths([depth[s] for s in range(256)])
