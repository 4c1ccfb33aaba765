"""The codec registry: per-layer encoders and decoders for every codec name in CODECS.

A codec turns one layer's masks (flat bool arrays, learning order) into streams: one per task, or
for `paper-huffman` one per group of up to 7 consecutive tasks.
"""

from __future__ import annotations

import numpy as np
from bitarray import bitarray

from formats import context
from formats.bitio import ByteReader, as_bits, check_zero_padding
from formats.errors import FormatError
from formats.huffman import decode_symbols, encode_symbols, read_table, table_from_frequencies

CODECS: tuple[str, ...] = ("context", "ascii7", "ascii7-huffman", "paper-huffman", "packbits")  # in files
AUTO = "auto"  # pack() only: the smallest of CODECS; never written to a file
PACK_CODECS: tuple[str, ...] = (*CODECS, AUTO)
GROUP = 7  # bits per ASCII symbol / tasks per paper group


def tasks_per_stream(codec: str) -> int:
    return GROUP if codec == "paper-huffman" else 1


def stream_groups(codec: str, n_tasks: int) -> list[range]:
    """Task indices covered by each stream unit, in order."""
    step = tasks_per_stream(codec)
    return [range(t, min(t + step, n_tasks)) for t in range(0, n_tasks, step)]


# --- groupings into 7-bit symbols -------------------------------------------------------------


def article_symbols(mask: np.ndarray) -> np.ndarray:
    """7 consecutive weights per symbol, first weight = most significant bit; last one zero-padded."""
    n_sym = -(-mask.size // GROUP)
    padded = np.zeros(n_sym * GROUP, dtype=np.uint8)
    padded[: mask.size] = mask.view(np.uint8)
    return np.packbits(padded.reshape(n_sym, GROUP), axis=1).ravel() >> 1


def article_mask(symbols: np.ndarray, n: int, what: str) -> np.ndarray:
    """Inverse of article_symbols; the padding bits must be zero."""
    bits = np.unpackbits(symbols[:, None], axis=1)[:, 1:].ravel()
    if bits[n:].any():
        raise FormatError(f"{what}: padding bits of the last symbol are not zero")
    return bits[:n].view(bool).copy()


def paper_symbols(masks: list[np.ndarray]) -> np.ndarray:
    """One symbol per weight from up to 7 tasks: task t+i is bit 6-i (missing tasks are 0 bits)."""
    symbols = np.zeros(masks[0].size, dtype=np.uint8)
    for i, mask in enumerate(masks):
        symbols |= mask.view(np.uint8) << (GROUP - 1 - i)
    return symbols


def paper_masks(symbols: np.ndarray, n_tasks: int, what: str) -> list[np.ndarray]:
    """Inverse of paper_symbols; the bits of tasks past the last one must be zero."""
    if np.any(symbols & ((1 << (GROUP - n_tasks)) - 1)):
        raise FormatError(f"{what}: bits of the padding tasks are not zero")
    return [((symbols >> (GROUP - 1 - i)) & 1).astype(bool) for i in range(n_tasks)]


# --- Huffman-coded symbol streams --------------------------------------------------------------


def huffman_stream(symbols: np.ndarray) -> bytes:
    """Canonical table (HuffmanTable.to_bytes) followed by the codes, zero-padded to a byte."""
    table = table_from_frequencies(np.bincount(symbols, minlength=128))
    return table.to_bytes() + encode_symbols(table, symbols).tobytes()


def huffman_symbols(data: bytes, n_symbols: int, what: str) -> np.ndarray:
    reader = ByteReader(data, what)
    table = read_table(reader, alphabet=128)
    code = bitarray()
    code.frombytes(reader.rest())
    symbols, used = decode_symbols(code, table, n_symbols, what)
    spare = len(code) - used
    if spare >= 8:
        raise FormatError(f"{what}: {spare} unused bits after the code (at most 7 padding bits allowed)")
    if code[used:].any():
        raise FormatError(f"{what}: padding bits after the code are not zero")
    return symbols


# --- per-codec stream encoders / decoders ------------------------------------------------------


def encode_layer(codec: str, masks: list[np.ndarray]) -> list[bytes]:
    """All streams of one layer, in stream order."""
    if codec == "context":
        return context.encode_layer(masks)
    if codec == "packbits":
        return [np.packbits(m).tobytes() for m in masks]
    if codec == "ascii7":
        return [article_symbols(m).tobytes() for m in masks]
    if codec == "ascii7-huffman":
        return [huffman_stream(article_symbols(m)) for m in masks]
    if codec == "paper-huffman":
        return [huffman_stream(paper_symbols(masks[g.start : g.stop])) for g in stream_groups(codec, len(masks))]
    raise FormatError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")


class LayerDecoder:
    """Decodes the streams of one layer in order; `decode` returns the masks a stream covers."""

    def __init__(self, codec: str, size: int):
        if codec not in CODECS:
            raise FormatError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
        self.codec = codec
        self.size = size
        self.context = context.LayerDecoder(size) if codec == "context" else None

    def decode(self, data: bytes, n_tasks: int, what: str, ones: list[int] | None = None) -> list[np.ndarray]:
        """The masks of one stream; `ones` (the header's counts) lets `context` refuse a stream whose
        section counts disagree before it builds a mask (other codecs' outputs are bounded by their bits)."""
        n = self.size
        if self.context is not None:
            return [self.context.decode(data, what, None if ones is None else ones[0])]
        if self.codec == "packbits":
            _expect_length(data, -(-n // 8), what)
            bits = as_bits(data)
            check_zero_padding(bits, n, what)
            return [bits[:n].view(bool).copy()]
        if self.codec == "ascii7":
            _expect_length(data, -(-n // GROUP), what)
            symbols = np.frombuffer(data, dtype=np.uint8)
            high = np.flatnonzero(symbols > 127)
            if high.size:
                raise FormatError(f"{what}: byte {high[0]} is 0x{symbols[high[0]]:02x}, above 127")
            return [article_mask(symbols, n, what)]
        if self.codec == "ascii7-huffman":
            return [article_mask(huffman_symbols(data, -(-n // GROUP), what), n, what)]
        return paper_masks(huffman_symbols(data, n, what), n_tasks, what)


def _expect_length(data: bytes, expected: int, what: str) -> None:
    if len(data) != expected:
        raise FormatError(f"{what}: stream is {len(data)} bytes, expected {expected}")
