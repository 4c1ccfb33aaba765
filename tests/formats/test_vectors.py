"""Explicit (bits -> bytes) vectors for every codec and building block, as in docs/FORMAT.md."""

import hashlib

import numpy as np
import pytest

from formats import codecs, context, golomb
from formats.bitio import ByteReader, varint
from formats.errors import FormatError
from formats.huffman import HuffmanTable, block8_table, table_from_frequencies
from tests.formats.helpers import bits

# (codec, masks of one layer as bit strings, expected streams as hex)
VECTORS = [
    ("packbits", [""], [""]),
    ("packbits", ["1"], ["80"]),
    ("packbits", ["10110"], ["b0"]),
    ("packbits", ["11111111 1"], ["ff 80"]),
    ("packbits", ["0000000"], ["00"]),
    ("ascii7", [""], [""]),
    ("ascii7", ["1"], ["40"]),
    ("ascii7", ["1111111"], ["7f"]),
    ("ascii7", ["0000001 1"], ["01 40"]),
    ("ascii7", ["1010101 0101010 11"], ["55 2a 60"]),
    ("ascii7-huffman", [""], ["00"]),
    ("ascii7-huffman", ["0000000"], ["01 01 00 00"]),  # one-symbol alphabet: code '0'
    ("ascii7-huffman", ["1111111 1111111"], ["01 01 7f 00"]),
    ("ascii7-huffman", ["0000000 0000000 0100000"], ["01 02 20 00 c0"]),  # FORMAT.md 7.2
    ("ascii7-huffman", ["1"], ["01 01 40 00"]),
    ("paper-huffman", ["10", "11"], ["01 02 20 60 80"]),
    ("paper-huffman", ["10"] * 8, ["01 02 00 7f 80", "01 02 00 40 80"]),  # 7 tasks + 1
    ("paper-huffman", [""], ["00"]),
    ("context", [""], [""]),
    ("context", ["0" * 24], ["00"]),
    ("context", ["1" * 24], ["18"]),
    ("context", ["10110010"], ["04 00 b2"]),  # raw section
    ("context", ["0"], ["00"]),
    ("context", ["1"], ["01"]),
    # FORMAT.md 7.1: weights {3, 17}, then {3, 17, 20}
    ("context", ["000100000000000001000000", "000100000000000001001000"], ["02 01 08 03 4d 80", "01 01 0f 02 02 90"]),
    # second task equal to the first: contexts 0 and 2 both constant
    ("context", ["0110", "0110"], ["02 00 60", "00 02"]),
]


@pytest.mark.parametrize(("codec", "masks", "streams"), VECTORS)
def test_encode_vector(codec, masks, streams):
    encoded = codecs.encode_layer(codec, [bits(m) for m in masks])
    assert [s.hex(" ") for s in encoded] == streams


@pytest.mark.parametrize(("codec", "masks", "streams"), VECTORS)
def test_decode_vector(codec, masks, streams):
    n = len(masks[0].replace(" ", ""))
    decoder = codecs.LayerDecoder(codec, n)
    decoded = []
    for group, stream in zip(codecs.stream_groups(codec, len(masks)), streams):
        decoded += decoder.decode(bytes.fromhex(stream), len(group), "s")
    assert ["".join("1" if b else "0" for b in m) for m in decoded] == [m.replace(" ", "") for m in masks]


@pytest.mark.parametrize(
    ("value", "encoded"), [(0, "00"), (1, "01"), (127, "7f"), (128, "80 01"), (300, "ac 02"), (2**32, "80 80 80 80 10")]
)
def test_varint(value, encoded):
    assert varint(value).hex(" ") == encoded
    assert ByteReader(bytes.fromhex(encoded)).varint("v") == value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("80", "stream ends before v (at byte 1)"),
        ("80 00", "stream: v is an overlong varint (at byte 1)"),
        ("ff ff ff ff ff ff ff ff ff ff 01", "stream: v varint longer than 10 bytes"),
    ],
)
def test_varint_errors(data, message):
    with pytest.raises(FormatError) as err:
        ByteReader(bytes.fromhex(data)).varint("v")
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("gaps", "m", "unary", "fixed", "extra"),
    [
        ([3, 13], 8, "010", "0110", "11"),  # Rice code (u = 0): every remainder has an extra bit
        ([0, 2], 1, "0110", "", ""),  # m = 1: unary only
        ([2, 6], 5, "010", "1001", ""),  # b = 3, u = 3: both remainders short
        ([2, 0], 3, "00", "10", "1"),  # b = 2, u = 1: r = 2 -> '1' + extra '1'; r = 0 -> '0'
        ([1], 3, "0", "1", "0"),  # r = 1 -> '1' + extra '0' (truncated binary '10')
        ([], 4, "", "", ""),
    ],
)
def test_golomb_streams(gaps, m, unary, fixed, extra):
    code = golomb.encode_gaps(np.array(gaps, dtype=np.int64), m)
    as_text = ["".join(map(str, s)) for s in (code.unary, code.fixed, code.extra)]
    assert as_text == [unary, fixed, extra]
    assert golomb.coded_size(np.array(gaps, dtype=np.int64), m) == code.bits
    stream = np.concatenate([code.unary, code.fixed, code.extra])
    positions, end = golomb.decode_positions(stream, 0, code.unary.size, len(gaps), m, 100, "s")
    assert end == stream.size
    assert list(np.diff(positions, prepend=-1) - 1) == gaps


def test_golomb_parameter():
    assert [golomb.best_parameter(k, 1000) for k in (0, 1, 30, 100, 300, 400, 500)] == [1, 693, 23, 7, 2, 1, 1]


def test_huffman_table_bytes_and_codes():
    table = table_from_frequencies(np.bincount([0, 0, 0, 5, 5, 9], minlength=128))
    assert table.to_bytes().hex(" ") == "02 01 02 00 09 05"
    assert {s: c.to01() for s, c in table.codes.items()} == {0: "0", 9: "10", 5: "11"}
    assert table_from_frequencies(np.zeros(128, dtype=int)) == HuffmanTable((0,), ())


def test_block8_tables_are_fixed():
    """The context codec's block code is part of the format: lock every table."""
    lengths = b"".join(block8_table(q).lengths.astype(np.uint8).tobytes() for q in context.BLOCK8_Q)
    assert hashlib.sha256(lengths).hexdigest() == ("83dfd3c6b5ba1e209ee06d0b06fffebc742dc71379300f806ca19d779ab500eb")
    assert list(block8_table(16).lengths[[0, 1, 3, 255]]) == [3, 5, 7, 15]
    assert set(block8_table(32).lengths) == {8}
    for q in context.BLOCK8_Q:
        table = block8_table(q)
        assert table.max_bits <= 28
        assert sum(c << (table.max_bits - b) for b, c in enumerate(table.count)) == 1 << table.max_bits
        weight_order = np.argsort(-(q ** np.arange(9.0) * (64 - q) ** (8 - np.arange(9.0))))
        by_ones = [table.lengths[[s for s in range(256) if bin(s).count("1") == j]] for j in weight_order]
        assert all(a.max() <= b.min() for a, b in zip(by_ones, by_ones[1:]))  # likelier: not longer


def test_context_block_section_decodes():
    """A hand-made block-code section: 16 bits, q = 24, two blocks."""
    table = block8_table(24)
    sub = bits("00100101 11000000")
    code = table.codes[0b00100101] + table.codes[0b11000000]
    stream = bytes([5, context.BLOCK8, 24]) + code.tobytes()  # tobytes pads with zero bits
    assert np.array_equal(context.LayerDecoder(16).decode(stream, "s"), sub)


def test_context_picks_block_code_near_half():
    rng = np.random.default_rng(5)
    mask = rng.random(50_000) < 0.35
    stream = context.encode_layer([mask])[0]
    reader = ByteReader(stream)
    reader.varint("ones")
    assert reader.u8("method") == context.BLOCK8
    assert np.array_equal(context.LayerDecoder(mask.size).decode(stream, "s"), mask)
