"""Every way a decode can fail, with its exact one-line message."""

import copy
import json
import struct
import zlib

import numpy as np
import pytest

from formats import FormatError, LayerMasks, pack, unpack
from formats.container import MAGIC
from formats.huffman import block8_table
from tests.formats.helpers import restream, seal, single_stream_file, split

MASKS_1 = [np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1], bool), np.array([1, 1, 0, 0, 0], bool)]
MASKS_2 = [np.array([1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1], bool), np.array([0, 1, 0, 0, 1], bool)]
GOOD = pack(
    [LayerMasks("fc1", (3, 4), [MASKS_1[0], MASKS_2[0]]), LayerMasks("fc2", (5,), [MASKS_1[1], MASKS_2[1]])],
    [1, 2],
    "context",
    {"seed": 0},
)
HEADER, BODY = split(GOOD)
REGION = len(BODY)  # stream bytes; offsets below are read from the header, not hard-coded
OFFSET = HEADER["streams"]["offset"]
LENGTH = HEADER["streams"]["length"]


def error_of(data: bytes, **kwargs) -> str:
    with pytest.raises(FormatError) as err:
        unpack(data, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def with_header(change) -> bytes:
    header = copy.deepcopy(HEADER)
    change(header)
    return seal(header, BODY)


def test_good_file_decodes():
    packed = unpack(GOOD)
    assert [m.tolist() for m in packed.layers[1].masks] == [m.tolist() for m in (MASKS_1[1], MASKS_2[1])]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated: 0 bytes, shorter than the 8-byte magic"),
        (b"WSNM", "truncated: 4 bytes, shorter than the 8-byte magic"),
        (
            b"PK\x03\x04" + bytes(20),
            "bad magic: expected b'WSNM\\x89\\r\\n\\x1a', got b'PK\\x03\\x04\\x00\\x00\\x00\\x00' (not a .wsnm file)",
        ),
        (
            b"WSNM\x89\n\x1a\n" + bytes(20),
            "bad magic: expected b'WSNM\\x89\\r\\n\\x1a', got b'WSNM\\x89\\n\\x1a\\n' (not a .wsnm file)",
        ),
        (MAGIC + b"\x01\x00\x05", "truncated: 11 bytes, the fixed prefix is 14"),
        (
            MAGIC + struct.pack("<HI", 2, 2) + b"{}" + bytes(4),
            "unsupported format version 2 (this reader knows version 1)",
        ),
        (
            MAGIC + struct.pack("<HI", 0, 2) + b"{}" + bytes(4),
            "unsupported format version 0 (this reader knows version 1)",
        ),
        (MAGIC + struct.pack("<HI", 1, 2**20 + 1), "header length 1048577 exceeds the limit of 1048576 bytes"),
        (MAGIC + struct.pack("<HI", 1, 2**32 - 1), "header length 4294967295 exceeds the limit of 1048576 bytes"),
        (
            MAGIC + struct.pack("<HI", 1, 100) + b"{}",
            "truncated: 16 bytes, the 100-byte header and the trailer need 118",
        ),
    ],
)
def test_prefix_errors(data, message):
    assert error_of(data) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "header: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (b"", "header: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (b"\xff{}", "header: not valid UTF-8 (invalid start byte at byte 0)"),
        (b'{"a":NaN}', "header: not valid JSON (NaN is not allowed)"),
        (b'{"a":-Infinity}', "header: not valid JSON (-Infinity is not allowed)"),
        (b'{"a":1,"a":2}', "header: not valid JSON (duplicate key 'a')"),
        (b"[" * 100_000 + b"]" * 100_000, "header: JSON nested deeper than 16 levels (at byte 16)"),
        (b"[]", "header: expected a JSON object, got list"),
        (b"{}", "header: missing key(s) codec, layers, ones, streams, task_ids"),
    ],
)
def test_json_errors(raw, message):
    assert error_of(seal(None, b"", raw_header=raw)) == message


def _set(path, value):
    def change(header):
        target = header
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(["streams"], KeyError), "header: missing key(s) streams"),
        (_set(["extra"], 1), "header: unknown key(s) 'extra'"),
        (_set(["a\nb"], 1), "header: unknown key(s) 'a\\nb'"),  # one line, whatever the key holds
        (
            _set(["codec"], "gzip"),
            "header: unknown codec 'gzip' (known: context, ascii7, ascii7-huffman, paper-huffman, packbits)",
        ),
        (_set(["meta"], []), "header: 'meta' must be a JSON object"),
        (_set(["task_ids"], "12"), "header: 'task_ids' must be a list"),
        (_set(["task_ids"], [1, "2"]), "header: task id '2' is not an integer in 0..2147483647"),
        (_set(["task_ids"], [1, True]), "header: task id True is not an integer in 0..2147483647"),
        (_set(["task_ids"], [-1, 2]), "header: task id -1 is not an integer in 0..2147483647"),
        (_set(["task_ids"], [2, 2]), "header: task ids are not unique"),
        (_set(["task_ids"], list(range(65536))), "header: 65536 tasks exceed the limit of 65535"),
        (_set(["layers"], {}), "header: 'layers' must be a list"),
        (
            _set(["layers"], [{"name": f"l{i}", "shape": [1]} for i in range(4097)]),
            "header: 4097 layers exceed the limit of 4096",
        ),
        (_set(["layers", 0, "dtype"], "bool"), "header: layer 0 must be an object with exactly 'name' and 'shape'"),
        (_set(["layers", 1, "name"], ""), "header: layer 1 name must be a string of 1..256 characters"),
        (_set(["layers", 1, "name"], "fc1"), "header: layer name 'fc1' appears twice"),
        (_set(["layers", 1, "shape"], 5), "header: layer 'fc2' shape must be a list of at most 32 integers"),
        (
            _set(["layers", 1, "shape"], [5, -1]),
            "header: layer 'fc2' shape has dimension -1, expected an integer in 0..2147483648",
        ),
        (
            _set(["layers", 1, "shape"], [5.0]),
            "header: layer 'fc2' shape has dimension 5.0, expected an integer in 0..2147483648",
        ),
        (
            _set(["layers", 1, "shape"], [65536, 32769]),
            "header: layer 'fc2' has 2147549184 weights, over the limit of 2147483648",
        ),
        (
            _set(["layers", 1, "shape"], [2**31] * 16),
            "header: layer 'fc2' has " + str(2**496) + " weights, over the limit of 2147483648",
        ),
        (_set(["streams"], []), "header: 'streams' must be an object with exactly the lists crc32, length, offset"),
        (_set(["streams", "crc32"], [0]), "header: streams.crc32 has 1 entries, expected 4"),
        (_set(["streams", "length"], None), "header: streams.length has NoneType entries, expected 4"),
        (_set(["streams", "offset", 1], -3), "header: streams.offset[1] = -3 is not a non-negative integer"),
        (_set(["streams", "offset", 1], True), "header: streams.offset[1] = True is not a non-negative integer"),
        (_set(["streams", "crc32", 2], 2**32), "header: streams.crc32[2] = 4294967296 does not fit in 32 bits"),
        (_set(["ones"], [[1, 1]]), "header: 'ones' must be a list of 2 lists (one per task)"),
        (
            _set(["ones", 1], [6, 9]),
            "header: ones[1] = [6, 9] is not a list of 2 counts, each between 0 and its layer's size",
        ),
        (
            _set(["streams", "length", 3], 10**6),
            f"stream 3 (layer 'fc2', task 2): bytes {OFFSET[3]}..{OFFSET[3] + 10**6} "
            f"lie outside the {REGION}-byte stream region (truncated file?)",
        ),
        (
            _set(["streams", "offset", 1], 2**40),
            f"stream 1 (layer 'fc2', task 1): bytes {2**40}..{2**40 + LENGTH[1]} "
            f"lie outside the {REGION}-byte stream region (truncated file?)",
        ),
        (
            _set(["streams", "offset", 1], 0),
            f"stream 1 (layer 'fc2', task 1): offset 0, expected {LENGTH[0]} (streams are stored back to back)",
        ),
        (_set(["ones", 1, 0], 4), "stream 2 (layer 'fc1', task 2): the sections hold 5 ones, the header says 4"),
    ],
)
def test_header_errors(change, message):
    assert error_of(with_header(change)) == message


def test_header_layout_is_what_the_tests_assume():
    assert HEADER["ones"] == [[4, 2], [5, 2]] and OFFSET[0] == 0 and LENGTH[0] > 0


def test_total_bits_limit():
    assert error_of(GOOD, max_bits=33) == (
        "header: 34 mask bits in total exceed the limit of 33; raise it with WSN_MAX_MASK_BITS"
    )
    assert unpack(GOOD, max_bits=34).task_ids == [1, 2]


def test_trailing_garbage():
    assert error_of(GOOD + b"extra") == "trailing garbage: 5 bytes more than the header describes"
    assert error_of(seal(HEADER, BODY + b"\x00")) == "trailing garbage: 1 bytes more than the header describes"


def test_file_crc_mismatch():
    bad = bytearray(GOOD)
    bad[-10] ^= 0x04
    stored = struct.unpack("<I", GOOD[-4:])[0]
    assert error_of(bytes(bad)) == (
        f"file CRC32 mismatch: stored 0x{stored:08x}, computed 0x{zlib.crc32(bytes(bad[:-4])):08x}"
    )


def test_stream_crc_mismatch():
    body = bytearray(BODY)
    body[OFFSET[1]] ^= 0x80  # first byte of stream 1
    computed = zlib.crc32(bytes(body[OFFSET[1] : OFFSET[1] + LENGTH[1]]))
    assert error_of(seal(HEADER, bytes(body))) == (
        f"stream 1 (layer 'fc2', task 1): CRC32 mismatch: stored 0x{HEADER['streams']['crc32'][1]:08x}, "
        f"computed 0x{computed:08x}"
    )


def test_truncated_at_every_position():
    for size in range(len(GOOD)):
        message = error_of(GOOD[:size])
        assert message.startswith("truncated: ") or message.endswith("(truncated file?)"), (size, message)


def _block8_stream(ones, blocks):
    table = block8_table(24)
    code = sum((table.codes[b] for b in blocks[1:]), table.codes[blocks[0]].copy())
    return bytes([ones, 2, 24]) + code.tobytes()


S = "stream 0 (layer 'fc', task 1)"
C0 = S + ", context 0"


@pytest.mark.parametrize(
    ("codec", "n", "stream", "ones", "message"),
    [
        ("packbits", 8, "", 0, f"{S}: stream is 0 bytes, expected 1"),
        ("packbits", 4, "f8", 4, f"{S}: padding bits after the code are not zero"),
        ("ascii7", 7, "80", 0, f"{S}: byte 0 is 0x80, above 127"),
        ("ascii7", 8, "00 00 00", 0, f"{S}: stream is 3 bytes, expected 2"),
        ("ascii7", 3, "7f", 3, f"{S}: padding bits of the last symbol are not zero"),
        ("ascii7-huffman", 7, "", 0, f"{S} ends before Huffman table max code length (at byte 0)"),
        ("ascii7-huffman", 7, "20", 0, f"{S}: Huffman table: max code length 32 > 31"),
        ("ascii7-huffman", 7, "02 01", 0, f"{S} ends inside Huffman table counts: needs 2 bytes at byte 1, has 1"),
        ("ascii7-huffman", 7, "02 01 00", 0, f"{S}: Huffman table: no code has the max length 2"),
        ("ascii7-huffman", 7, "01 03 00 01 02", 0, f"{S}: Huffman table: 3 codes of length 1 > 2"),
        (
            "ascii7-huffman",
            7,
            "02 01 03 00 01 02 03",
            0,
            f"{S}: Huffman table: code lengths are over-subscribed (Kraft sum > 1)",
        ),
        ("ascii7-huffman", 7, "01 02 05", 0, f"{S} ends inside Huffman table symbols: needs 2 bytes at byte 2, has 1"),
        ("ascii7-huffman", 7, "01 02 05 05 00", 0, f"{S}: Huffman table: a symbol is listed twice"),
        ("ascii7-huffman", 7, "01 01 80 00", 0, f"{S}: Huffman table: symbol 128 outside the alphabet 0..127"),
        ("ascii7-huffman", 7, "00", 0, f"{S}: empty Huffman table for 1 symbols"),
        ("ascii7-huffman", 7, "01 01 05", 0, f"{S}: 1 symbols need at least 1 bits of Huffman code, the stream has 0"),
        ("ascii7-huffman", 14, "01 01 05 40", 0, f"{S}: Huffman code ends or uses an unassigned code before 2 symbols"),
        (
            "ascii7-huffman",
            7,
            "01 01 05 00 00",
            2,
            f"{S}: 15 unused bits after the code (at most 7 padding bits allowed)",
        ),
        ("ascii7-huffman", 7, "01 01 05 40", 2, f"{S}: padding bits after the code are not zero"),
        ("ascii7-huffman", 3, "01 01 7f 00", 3, f"{S}: padding bits of the last symbol are not zero"),
        ("ascii7-huffman", 7, "01 01 7f 00", 6, f"{S}: task 1 decoded with 7 ones, the header says 6"),
        ("paper-huffman", 1, "01 01 7f 00", 1, f"{S}: bits of the padding tasks are not zero"),
        ("context", 8, "", 0, f"{S} ends before context 0 count of ones (at byte 0)"),
        ("context", 8, "80 00", 0, f"{S}: context 0 count of ones is an overlong varint (at byte 1)"),
        ("context", 8, "09", 0, f"{C0}: 9 ones in a subsequence of 8 bits"),
        ("context", 8, "04", 4, f"{S} ends before context 0 method (at byte 1)"),
        ("context", 8, "04 07", 4, f"{C0}: unknown method 7"),
        ("context", 8, "00 00", 0, f"{S}: 8 unused bits after the code (at most 7 padding bits allowed)"),
        ("context", 8, "04 00", 4, f"{C0}: raw section of 8 bits runs past the end of the stream"),
        ("context", 8, "04 00 ff", 4, f"{C0}: decoded 8 ones, header says 4"),
        ("context", 8, "04 00 f0 00", 4, f"{S}: 8 unused bits after the code (at most 7 padding bits allowed)"),
        ("context", 8, "04 00 f0 01", 4, f"{S}: 8 unused bits after the code (at most 7 padding bits allowed)"),
        ("context", 8, "02 01 00 00", 2, f"{C0}: Golomb parameter 0 outside 1..8"),
        ("context", 8, "02 01 09 00", 2, f"{C0}: Golomb parameter 9 outside 1..8"),
        ("context", 8, "02 01 01", 2, f"{S} ends before context 0 unary stream length (at byte 3)"),
        ("context", 8, "02 01 01 05", 2, f"{C0}: unary stream of 5 bits runs past the end of the stream"),
        ("context", 8, "02 01 01 02 c0", 2, f"{C0}: unary stream has 0 zero bits, expected 2"),
        ("context", 8, "02 01 01 03 20", 2, f"{C0}: unary stream does not end with a zero bit"),
        ("context", 64, "02 01 40 02 00", 2, f"{C0}: fixed stream of 10 bits runs past the end of the stream"),
        ("context", 200, "01 01 40 03 c0", 1, f"{C0}: extra stream of 1 bits runs past the end of the stream"),
        ("context", 8, "01 01 01 09 ff 00", 1, f"{C0}: gaps add up to position 8, beyond 8 bits"),
        ("context", 8, "01 01 01 0a ff 80", 1, f"{C0}: a gap of over 9 bits in a sequence of 8"),
        ("context", 16, "05 02 03", 5, f"{C0}: block code parameter 3 outside 4..60"),
        ("context", 16, "05 02", 5, f"{S} ends before context 0 block code parameter (at byte 2)"),
        ("context", 16, "05 02 18", 5, f"{C0}: 2 symbols need at least 10 bits of Huffman code, the stream has 0"),
        ("context", 16, "05 02 18 ff ff", 5, f"{C0}: Huffman code ends or uses an unassigned code before 2 symbols"),
        ("context", 12, _block8_stream(5, [0x25, 0x0F]).hex(), 5, f"{C0}: padding bits of the last block are not zero"),
        ("context", 16, _block8_stream(6, [0x25, 0xC0]).hex(), 6, f"{C0}: decoded 5 ones, header says 6"),
        (
            "context",
            16,
            (_block8_stream(5, [0x25, 0xC0]) + b"\x00").hex(),
            5,  # codes of 8 + 7 bits
            f"{S}: 9 unused bits after the code (at most 7 padding bits allowed)",
        ),
    ],
)
def test_stream_errors(codec, n, stream, ones, message):
    assert error_of(single_stream_file(codec, n, bytes.fromhex(stream), ones)) == message


def test_later_task_stream_error_names_layer_and_task():
    bad = restream(GOOD, 3, b"\x07")  # layer fc2, task 2: contexts 0 and 2 are non-empty
    assert error_of(bad) == "stream 3 (layer 'fc2', task 2), context 0: 7 ones in a subsequence of 3 bits"


def test_paper_group_label():
    masks = [np.ones(3, bool)] * 9
    data = pack([LayerMasks("w", (3,), masks)], list(range(10, 19)), "paper-huffman")
    assert error_of(restream(data, 1, b"\x00")) == (
        "stream 1 (layer 'w', tasks 17..18): empty Huffman table for 3 symbols"
    )


def test_meta_is_optional_when_reading():
    header = copy.deepcopy(HEADER)
    del header["meta"]
    assert unpack(seal(header, BODY)).meta == {}
    assert json.loads(json.dumps(unpack(GOOD).meta)) == {"seed": 0}
