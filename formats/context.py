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


class LayerDecoder:
    """Decodes one layer's context streams task by task, keeping the union and previous mask."""

    def __init__(self, size: int):
        self.size = size
        self.union: np.ndarray | None = None
        self.prev: np.ndarray | None = None

    def decode(self, data: bytes, what: str) -> np.ndarray:
        if self.prev is None:
            ctx = None
            index = [None, None, None]
            sizes = [self.size, 0, 0]
        else:
            ctx = context_ids(self.union, self.prev)
            index = [np.flatnonzero(ctx == c) for c in range(N_CONTEXTS)]
            sizes = [i.size for i in index]
        subs = _decode_sections(data, sizes, what)
        if ctx is None:
            mask = subs[0] if self.size else np.zeros(0, dtype=bool)
        else:
            mask = np.zeros(self.size, dtype=bool)
            for idx, sub in zip(index, subs):
                if idx.size:
                    mask[idx] = sub
        self.union = mask.copy() if self.union is None else np.logical_or(self.union, mask, out=self.union)
        self.prev = mask
        return mask


def _decode_sections(data: bytes, sizes: list[int], what: str) -> list[np.ndarray]:
    """Parse the section headers, then decode each context's subsequence from the payload bits."""
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
            subs.append(np.full(n, bool(ones), dtype=bool))
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
            sub = np.zeros(n, dtype=bool) if lps else np.ones(n, dtype=bool)
            sub[positions] = bool(lps)
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
