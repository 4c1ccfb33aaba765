"""Hostile files: the decoded-size limit, bounded memory, layer-name rules, non-finite numbers, depth.

Each test here failed on the reader before these rules (findings of a fuzzing campaign).
"""

import json
import sys
import tracemalloc
import unicodedata
import zlib

import numpy as np
import pytest

from formats import (
    DEFAULT_MAX_BITS,
    MAX_JSON_DEPTH,
    MAX_META_VALUES,
    FormatError,
    LayerMasks,
    describe,
    golomb,
    pack,
    unpack,
)
from formats.bitio import pack_bits, varint
from formats.container import PREFIX
from formats.header import SPACES
from tests.formats.helpers import seal, single_stream_file, split

GOOD = pack([LayerMasks("fc1", (3, 4), [np.eye(1, 12, 3, dtype=bool)[0]] * 2)], [1, 2], "context", {"seed": 0})
HEADER, BODY = split(GOOD)
FEW_MIB = 4 << 20
S = "stream 0 (layer 'fc', task 1)"


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(FormatError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def peak_of(call, *args, **kwargs) -> tuple[str, int]:
    """(FormatError message, tracemalloc peak in bytes) of a call that must be refused."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        message = error_of(call, *args, **kwargs)
        return message, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bomb(tasks: int = 32, weights: int = 2**31) -> bytes:
    """The campaign's decompression bomb: one `context` stream of 1 byte ("all zero") per task."""
    header = {
        "codec": "context",
        "layers": [{"name": "fc", "shape": [weights]}],
        "meta": {},
        "ones": [[0]] * tasks,
        "task_ids": list(range(tasks)),
        "streams": {"crc32": [zlib.crc32(b"\x00")] * tasks, "length": [1] * tasks, "offset": list(range(tasks))},
    }
    return seal(header, b"\x00" * tasks)


# --- 1. decoded-size limit and memory -----------------------------------------------------------


def test_decompression_bomb_is_refused_from_the_header():
    data = bomb()
    assert len(data) < 1024 and DEFAULT_MAX_BITS == 1 << 30
    expected = "header: 68719476736 mask bits in total exceed the limit of 1073741824; raise it with WSN_MAX_MASK_BITS"
    for call in (unpack, describe):
        message, peak = peak_of(call, data)
        assert (message, peak < FEW_MIB) == (expected, True)


def test_the_limit_is_the_callers_to_raise():
    data = single_stream_file("context", 2**15 * (2**15 + 1), b"\x09", 9)  # 2^30 + 2^15 bits, 1 task
    assert error_of(unpack, data) == (
        "header: 1073774592 mask bits in total exceed the limit of 1073741824; raise it with WSN_MAX_MASK_BITS"
    )
    assert error_of(unpack, data, max_bits=None) == error_of(unpack, data)
    # past the limit the (hostile) stream itself is refused, before anything of the layer's size exists
    message, peak = peak_of(unpack, data, max_bits=1 << 31)
    assert (message, peak < FEW_MIB) == (f"{S} ends before context 0 method (at byte 1)", True)
    assert error_of(unpack, GOOD, max_bits=23) == (
        "header: 24 mask bits in total exceed the limit of 23; raise it with WSN_MAX_MASK_BITS"
    )
    assert unpack(GOOD, max_bits=24).task_ids == [1, 2]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1024"])
def test_max_bits_must_be_a_count(bad):
    with pytest.raises(ValueError, match="max_bits must be a non-negative integer or None"):
        unpack(GOOD, max_bits=bad)


def _golomb_bad_padding(n: int) -> bytes:
    """One LPS at position 5 of n bits, Golomb m = n/2, then a set padding bit."""
    m = n // 2
    code = golomb.encode_gaps(np.array([5]), m)
    bits = np.concatenate([code.unary, code.fixed, code.extra])
    bits = np.concatenate([bits, [1], np.zeros(-(bits.size + 1) % 8, np.uint8)])
    return b"\x01\x01" + varint(m) + varint(code.unary.size) + pack_bits(bits)


HUGE = 1 << 29  # weights of the hostile layer: inside the default limit


@pytest.mark.parametrize(
    ("codec", "stream", "ones", "message"),
    [
        (
            "ascii7-huffman",
            bytes.fromhex("01 01 00 00"),
            0,
            f"{S}: 76695845 symbols need at least 76695845 bits of Huffman code, the stream has 8",
        ),
        (
            "paper-huffman",
            bytes.fromhex("01 01 00 00"),
            0,
            f"{S}: 536870912 symbols need at least 536870912 bits of Huffman code, the stream has 8",
        ),
        (
            "context",
            bytes.fromhex("05 02 18 00"),
            5,
            f"{S}, context 0: 67108864 symbols need at least 335544320 bits of Huffman code, the stream has 8",
        ),
        ("context", _golomb_bad_padding(HUGE), 1, f"{S}: padding bits after the code are not zero"),
        (
            "context",
            b"\x00",
            2,
            f"{S}: the sections hold 0 ones, the header says 2",
        ),  # "all zero", but not per the header
        (
            "context",
            bytes.fromhex("04 00 ff"),
            4,
            f"{S}, context 0: raw section of 536870912 bits runs past the end of the stream",
        ),
        ("packbits", b"\x00", 0, f"{S}: stream is 1 bytes, expected 67108864"),
        ("ascii7", b"\x00", 0, f"{S}: stream is 1 bytes, expected 76695845"),
    ],
)
def test_tiny_stream_claiming_a_huge_layer_stays_small(codec, stream, ones, message):
    data = single_stream_file(codec, HUGE, stream, ones)
    assert len(data) < 400
    got, peak = peak_of(unpack, data)
    assert got == message
    assert peak < FEW_MIB, f"{peak / 2**20:.1f} MiB"


def test_memory_follows_what_is_decoded():
    """A real 3-task layer of 2^22 weights: the decode peak stays within a few times its output."""
    rng = np.random.default_rng(0)
    score = rng.standard_normal(1 << 22)
    masks = [np.abs(score + 0.3 * rng.standard_normal(score.size)) > 1.6 for _ in range(3)]
    data = pack([LayerMasks("big", (1 << 22,), masks)], [0, 1, 2])
    tracemalloc.start()
    try:
        packed = unpack(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(np.array_equal(a, b) for a, b in zip(masks, packed.layers[0].masks))
    assert peak < 3 * (3 << 22)  # the three bool masks are 12 MiB


# --- 2. layer names -----------------------------------------------------------------------------


def with_name(name) -> bytes:
    header = json.loads(json.dumps(HEADER))
    header["layers"][0]["name"] = name
    return seal(header, BODY)


BAD_NAMES = [
    ("", "must be a string of 1..256 characters"),
    ("x" * 257, "must be a string of 1..256 characters"),
    ("a\x00b", "'a\\x00b' holds a control character U+0000 at character 1"),
    ("\x7f", "'\\x7f' holds a control character U+007F at character 0"),
    ("x\x85", "'x\\x85' holds a control character U+0085 at character 1"),
    ("a\nb", "'a\\nb' holds a control character U+000A at character 1"),
    ("a/b", "'a/b' holds a path separator ('/' or '\\')"),
    ("a\\b", "'a\\\\b' holds a path separator ('/' or '\\')"),
    (".", "'.' is not allowed"),
    ("..", "'..' is not allowed"),
    (" a", "' a' has leading or trailing whitespace"),
    ("a\t", "'a\\t' holds a control character U+0009 at character 1"),
    ("a\u3000", "'a\\u3000' has leading or trailing whitespace"),
    ("\u2028a", "'\\u2028a' has leading or trailing whitespace"),
    ("\xa0a", "'\\xa0a' has leading or trailing whitespace"),
]


def test_the_whitespace_list_is_unicode_white_space_outside_cc():
    assert SPACES == {
        chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace() and unicodedata.category(chr(c)) != "Cc"
    }


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_bad_layer_names_are_refused_on_read_and_pack(name, problem):
    assert error_of(unpack, with_name(name)) == f"header: layer 0 name {problem}"
    layers = [LayerMasks(name, (2,), [np.array([1, 0], bool)])]
    assert error_of(pack, layers, [1]) == f"layer 0 name {problem}"


def test_lone_surrogate_names_are_refused_on_read_and_pack():
    assert error_of(unpack, with_name("ab\ud800")) == (
        "header: layers[0]['name']: string holds a lone surrogate U+D800 at character 2 (not valid Unicode)"
    )
    layers = [LayerMasks("\udfff", (2,), [np.array([1, 0], bool)])]
    assert error_of(pack, layers, [1]) == "layer 0 name '\\udfff' holds a lone surrogate U+DFFF at character 0"


@pytest.mark.parametrize("name", ["y" * 256, "...", "a b", "layers.0.weight", "é", "😀", "-", "conv_1"])
def test_good_layer_names(name):
    assert unpack(with_name(name)).layers[0].name == name
    layers = [LayerMasks(name, (2,), [np.array([1, 0], bool)])]
    assert unpack(pack(layers, [1])).layers[0].name == name


# --- 3. numbers ----------------------------------------------------------------------------------


def with_raw(old: str, new: str) -> bytes:
    raw = json.dumps(HEADER, sort_keys=True, separators=(",", ":"))
    assert old in raw
    return seal(None, BODY, raw_header=raw.replace(old, new, 1).encode())


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('"seed":0', '"seed":1e400', "header: meta['seed']: number 1e400 is not finite"),
        ('"seed":0', '"seed":-1e400', "header: meta['seed']: number -1e400 is not finite"),
        ('"seed":0', '"seed":[2,{"x":1E+999}]', "header: meta['seed'][1]['x']: number 1E+999 is not finite"),
        ('"task_ids":[1', '"task_ids":[1e400', "header: task_ids[0]: number 1e400 is not finite"),
        ('"offset":[0', '"offset":[-9e999', "header: streams['offset'][0]: number -9e999 is not finite"),
    ],
)
def test_non_finite_numbers_are_refused(old, new, message):
    assert error_of(unpack, with_raw(old, new)) == message


@pytest.mark.parametrize(("text", "value"), [("1e308", 1e308), ("1e-400", 0.0), ("-0.0", -0.0)])
def test_finite_numbers_are_kept(text, value):
    assert unpack(with_raw('"seed":0', f'"seed":{text}')).meta == {"seed": value}


# --- 4. nesting, meta size and meta strings --------------------------------------------------------


def test_nesting_is_bounded_before_parsing():
    deepest = 0
    for _ in range(MAX_JSON_DEPTH - 2):  # header level 1, meta 2, these lists 3..16
        deepest = [deepest]
    assert unpack(with_raw('"seed":0', f'"seed":{json.dumps(deepest)}')).meta == {"seed": deepest}
    for depth in (MAX_JSON_DEPTH - 1, 900, 100_000):
        data = with_raw('"seed":0', '"seed":' + "[" * depth + "]" * depth)
        level_3 = data.index(b'"seed":[') + len('"seed":') - PREFIX.size  # header byte of the first list
        assert error_of(unpack, data) == f"header: JSON nested deeper than 16 levels (at byte {level_3 + 14})"
    assert unpack(with_raw('"seed":0', '"seed":"' + "[{" * 40 + '"')).meta == {"seed": "[{" * 40}


def test_pack_bounds_meta_depth_even_for_cycles():
    nested = 0
    for _ in range(MAX_JSON_DEPTH - 2):
        nested = [nested]
    layers = [LayerMasks("a", (1,), [np.ones(1, bool)])]
    assert unpack(pack(layers, [1], meta={"a": nested})).meta == {"a": nested}
    assert error_of(pack, layers, [1], meta={"a": [nested]}) == (
        "meta['a']" + "[0]" * (MAX_JSON_DEPTH - 2) + ": JSON nested deeper than 16 levels"
    )
    cycle: dict = {}
    cycle["self"] = cycle
    assert error_of(pack, layers, [1], meta=cycle).endswith("['self']: JSON nested deeper than 16 levels")


def test_meta_value_count_is_bounded():
    fits = list(range(MAX_META_VALUES - 1))  # the list itself is a value too
    assert unpack(with_raw('"seed":0', f'"seed":{json.dumps(fits)}')).meta == {"seed": fits}
    over = json.dumps(fits + [0])
    assert error_of(unpack, with_raw('"seed":0', f'"seed":{over}')) == "header: meta: more than 4096 values"
    layers = [LayerMasks("a", (1,), [np.ones(1, bool)])]
    assert error_of(pack, layers, [1], meta={"seed": fits + [0]}) == "meta: more than 4096 values"


@pytest.mark.parametrize(
    ("meta", "where"),
    [
        ({"note": "ok\ud800"}, "meta['note']: string holds a lone surrogate U+D800 at character 2"),
        ({"\udc00": 1}, "meta: a key holds a lone surrogate U+DC00 at character 0"),
        ({"a": [{"b": "\udbff"}]}, "meta['a'][0]['b']: string holds a lone surrogate U+DBFF at character 0"),
    ],
)
def test_meta_strings_must_be_valid_unicode(meta, where):
    raw = json.dumps({**HEADER, "meta": meta}, sort_keys=True)  # \\uXXXX escapes, as a hostile writer would
    assert error_of(unpack, seal(None, BODY, raw_header=raw.encode())) == f"header: {where} (not valid Unicode)"
    layers = [LayerMasks("a", (1,), [np.ones(1, bool)])]
    assert error_of(pack, layers, [1], meta=meta) == f"{where} (not valid Unicode)"


def test_meta_keeps_control_characters_and_surrogate_pairs():
    meta = {"note": "line 1\nline 2\t\x00", "emoji": "😀"}
    raw = json.dumps({**HEADER, "meta": meta}, sort_keys=True)
    assert "\\ud83d\\ude00" in raw and unpack(seal(None, BODY, raw_header=raw.encode())).meta == meta
    assert unpack(pack([LayerMasks("a", (1,), [np.ones(1, bool)])], [1], meta=meta)).meta == meta
