"""The `context` codec: each task's mask coded given the earlier masks of the same layer.

Every weight gets a context the decoder already knows: 0 = no earlier task used it, 1 = an earlier
task used it but the previous one did not, 2 = the previous task used it (the first task has only
context 0). The bits of each context form a subsequence coded on its own by the cheapest of: raw
bits, a Golomb code of the gaps between its less probable symbols, or a fixed Huffman code of
8-bit blocks. See docs/FORMAT.md for the byte layout.
"""

from __future__ import annotations

import numpy as np
from bitarray import bitarray

from formats import golomb
from formats.bitio import ByteReader, as_bits, check_zero_padding, pack_bits, varint
from formats.errors import FormatError
from formats.huffman import block8_table, decode_symbols, encode_symbols
from formats.stats import N_CONTEXTS, context_ids

RAW, GOLOMB, BLOCK8 = 0, 1, 2
BLOCK8_Q = range(4, 61)  # allowed P(1) = q/64 for the block code (longest code 28 bits)
# Methods tried by LPS fraction p (all in between): Golomb codes are within ~1% of the entropy up
# to p ~ 0.3 but lose up to 4% near p ~ 0.38; the block code is within ~1.5% from p ~ 0.1 up.
GOLOMB_ONLY_BELOW = 0.15
BLOCK_ONLY_ABOVE = 0.3


def _encode_section(sub: np.ndarray) -> tuple[bytes, list[np.ndarray]]:
    """Header bytes and payload bit arrays for one context's subsequence."""
    n = sub.size
    ones = int(np.count_nonzero(sub))
    head = varint(ones)
    if ones in (0, n):
        return head, []
    lps = 1 if 2 * ones <= n else 0
    k = ones if lps else n - ones
    p = k / n
    best = (n + 8, RAW, None)  # (cost in bits, method, parameter)
    if p <= BLOCK_ONLY_ABOVE:
        gaps = golomb.gaps_of(np.flatnonzero(sub if lps else ~sub))
        m = golomb.best_parameter(k, n)
        if p < GOLOMB_ONLY_BELOW:
            best = (0, GOLOMB, m)
        else:
            best = min(best, (golomb.coded_size(gaps, m) + 24, GOLOMB, m))
    if p >= GOLOMB_ONLY_BELOW:
        blocks = np.packbits(sub)
        hist = np.bincount(blocks, minlength=256)
        centre = round(64 * ones / n)
        for q in range(max(BLOCK8_Q.start, centre - 1), min(BLOCK8_Q.stop, centre + 2)):
            best = min(best, (int(hist @ block8_table(q).lengths) + 16, BLOCK8, q))
    _, method, param = best
    if method == RAW:
        return head + bytes([RAW]), [sub.view(np.uint8)]
    if method == GOLOMB:
        code = golomb.encode_gaps(gaps, param)
        head += bytes([GOLOMB]) + varint(param) + varint(code.unary.size)
        return head, [code.unary, code.fixed, code.extra]
    code_bits = encode_symbols(block8_table(param), blocks)
    code_array = np.unpackbits(np.frombuffer(code_bits.tobytes(), dtype=np.uint8))[: len(code_bits)]
    return head + bytes([BLOCK8, param]), [code_array]


def encode_task(mask: np.ndarray, ctx: np.ndarray | None) -> bytes:
    """One (layer, task) stream: section headers for contexts 0..2 present, then all payload bits."""
    head = bytearray()
    payload: list[np.ndarray] = []
    for sub in _subsequences(mask, ctx):
        if sub is None:
            continue
        section_head, section_bits = _encode_section(sub)
        head += section_head
        payload += section_bits
    bits = np.concatenate(payload) if payload else np.zeros(0, np.uint8)
    return bytes(head) + pack_bits(bits)


def _subsequences(mask: np.ndarray, ctx: np.ndarray | None) -> list[np.ndarray | None]:
    """The mask's bits of each context in weight order (None where a context is empty)."""
    if ctx is None:
        return [mask if mask.size else None, None, None]
    out: list[np.ndarray | None] = []
    for c in range(N_CONTEXTS):
        idx = np.flatnonzero(ctx == c)  # faster than boolean indexing on random selectors
        out.append(mask[idx] if idx.size else None)
    return out


def encode_layer(masks: list[np.ndarray]) -> list[bytes]:
    """One stream per task for one layer's masks in learning order."""
    streams = []
    union = prev = None
    for mask in masks:
        streams.append(encode_task(mask, None if prev is None else context_ids(union, prev)))
        union = mask.copy() if union is None else np.logical_or(union, mask, out=union)
        prev = mask
    return streams


SCATTER_CHUNK = 1 << 16  # weights per step when scattering subsequences back (bounds the index arrays)


class LayerDecoder:
    """Decodes one layer's context streams task by task, keeping the union and previous mask.

    A stream is parsed and checked completely (`_decode_sections`, memory proportional to its own
    bits) before anything of the layer's size is allocated for its task."""

    def __init__(self, size: int):
        self.size = size
        self.union: np.ndarray | None = None  # None while it equals prev (after the first task)
        self.prev: np.ndarray | None = None
        self.union_ones = self.prev_ones = 0

    def decode(self, data: bytes, what: str, ones: int | None = None) -> np.ndarray:
        """The next task's mask; `ones`, the header's count, is checked against the section headers first."""
        if self.prev is None:
            sizes = [self.size, 0, 0]
        else:  # context sizes from counts alone: 0 = not in union, 1 = union but not prev, 2 = prev
            sizes = [self.size - self.union_ones, self.union_ones - self.prev_ones, self.prev_ones]
        parts = _decode_sections(data, sizes, what, ones)
        if self.prev is None:
            first = _expand(parts[0], self.size) if self.size else False
            mask = np.full(self.size, first, dtype=bool) if isinstance(first, bool) else first
        else:
            union = self.prev if self.union is None else self.union
            mask = np.zeros(self.size, dtype=bool)
            self._scatter(mask, union, [None if p is None else _expand(p, n) for p, n in zip(parts, sizes)])
            self.union = np.logical_or(union, mask, out=self.union)
        self.prev = mask
        self.prev_ones = int(np.count_nonzero(mask))
        self.union_ones = self.prev_ones if self.union is None else int(np.count_nonzero(self.union))
        return mask

    def _scatter(self, mask: np.ndarray, union: np.ndarray, subs: list[np.ndarray | bool | None]) -> None:
        """mask[weights of context c] = subs[c], a chunk of weights at a time."""
        taken = [0] * N_CONTEXTS
        for start in range(0, self.size, SCATTER_CHUNK):
            stop = min(start + SCATTER_CHUNK, self.size)
            ctx = context_ids(union[start:stop], self.prev[start:stop])  # (chunk,) uint8
            out = mask[start:stop]
            for c, sub in enumerate(subs):
                if sub is None or sub is False:
                    continue
                idx = np.flatnonzero(ctx == c)
                out[idx] = True if sub is True else sub[taken[c] : taken[c] + idx.size]
                taken[c] += idx.size


class _Sparse:
    """A Golomb-coded subsequence before it is expanded: the positions of its LPS."""

    def __init__(self, positions: np.ndarray, lps: int):
        self.positions = positions
        self.lps = lps


def _expand(part, n: int) -> np.ndarray | bool:
    """A checked section as its n bits: a bool array, or True / False when it is constant."""
    if isinstance(part, _Sparse):
        sub = np.zeros(n, dtype=bool) if part.lps else np.ones(n, dtype=bool)
        sub[part.positions] = bool(part.lps)
        return sub
    return part


def _decode_sections(data: bytes, sizes: list[int], what: str, expected_ones: int | None = None) -> list:
    """Parse and check the whole stream; per context: None (empty), True/False (constant), a bool
    array (raw, block) or _Sparse (Golomb). Nothing here is larger than the stream's own bits."""
    reader = ByteReader(data, what)
    plans = []
    for c, n in enumerate(sizes):
        if n == 0:
            plans.append(None)
            continue
        where = f"{what}, context {c}"
        ones = reader.varint(f"context {c} count of ones")
        if ones > n:
            raise FormatError(f"{where}: {ones} ones in a subsequence of {n} bits")
        if ones in (0, n):
            plans.append((where, n, ones, None, ()))
            continue
        method = reader.u8(f"context {c} method")
        if method == RAW:
            params: tuple = ()
        elif method == GOLOMB:
            m = reader.varint(f"context {c} Golomb parameter")
            if not 1 <= m <= n:
                raise FormatError(f"{where}: Golomb parameter {m} outside 1..{n}")
            params = (m, reader.varint(f"context {c} unary stream length"))
        elif method == BLOCK8:
            q = reader.u8(f"context {c} block code parameter")
            if q not in BLOCK8_Q:
                raise FormatError(f"{where}: block code parameter {q} outside 4..60")
            params = (q,)
        else:
            raise FormatError(f"{where}: unknown method {method}")
        plans.append((where, n, ones, method, params))
    declared = sum(plan[2] for plan in plans if plan is not None)
    if expected_ones is not None and declared != expected_ones:
        raise FormatError(f"{what}: the sections hold {declared} ones, the header says {expected_ones}")
    payload = reader.rest()
    bits = as_bits(payload)
    code: bitarray | None = None
    pos = 0
    subs = []
    for plan in plans:
        if plan is None:
            subs.append(None)
            continue
        where, n, ones, method, params = plan
        if method is None:
            subs.append(bool(ones))
            continue
        if method == RAW:
            if n > bits.size - pos:
                raise FormatError(f"{where}: raw section of {n} bits runs past the end of the stream")
            sub = bits[pos : pos + n].view(bool)
            pos += n
        elif method == GOLOMB:
            lps = 1 if 2 * ones <= n else 0
            k = ones if lps else n - ones
            positions, pos = golomb.decode_positions(bits, pos, params[1], k, params[0], n, where)
            subs.append(_Sparse(positions, lps))  # exactly k distinct positions < n: the count holds
            continue
        else:
            if code is None:
                code = bitarray()
                code.frombytes(payload)
            nblocks = (n + 7) // 8
            blocks, used = decode_symbols(code[pos:], block8_table(params[0]), nblocks, where)
            block_bits = np.unpackbits(blocks)
            if block_bits[n:].any():
                raise FormatError(f"{where}: padding bits of the last block are not zero")
            sub = block_bits[:n].view(bool)
            pos += used
        found = int(np.count_nonzero(sub))
        if found != ones:
            raise FormatError(f"{where}: decoded {found} ones, header says {ones}")
        subs.append(sub)
    check_zero_padding(bits, pos, what)
    return subs
