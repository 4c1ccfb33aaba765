"""Fuzz `unpack` only: any byte string decodes or raises FormatError, never anything else.

Inputs: random bytes; valid files with bit flips, truncations and splices; files whose streams are
corrupted and then given matching lengths and CRCs (so the codec decoders see the damage); files
whose JSON header values are replaced and the file CRC fixed; structure-aware mutants of every
codec's files (tests/formats/mutators.py) with every CRC resealed, under a memory bound.
"""

import json
import random
import struct
import tracemalloc
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import CODECS, FormatError, PackedMasks, pack, unpack
from tests.formats.helpers import restream, seal, split
from tests.formats.mutators import mutate_structure, sample_files

FUZZ_MAX_BITS = 1 << 20  # keeps a fuzzed shape from asking for gigabytes
STRUCTURE_MAX_BITS = 1 << 22  # a tiny stream may legitimately decode to this many bits (constant sections)
MAX_PEAK_BYTES = 64 << 20  # tracemalloc peak allowed for one mutant

POOL = sample_files()
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def check(data: bytes, max_bits: int | None = FUZZ_MAX_BITS) -> PackedMasks | None:
    """unpack() returns or raises FormatError with a one-line message; the result or None."""
    try:
        result = unpack(data, max_bits=max_bits)
    except FormatError as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert "malformed stream (" not in message, message  # the safety net must never be needed
        return None
    assert isinstance(result, PackedMasks)
    return result


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data):
    check(data)
    check(POOL[0][:18] + data)


@FUZZ
@given(
    st.sampled_from(POOL),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=8),
    st.integers(0, 10**6),
    st.booleans(),
)
def test_bit_flips_and_truncations(data, flips, cut, reseal_trailer):
    buf = bytearray(data)
    for pos, bit in flips:
        buf[pos % len(buf)] ^= 1 << bit
    buf = buf[: len(buf) - cut % 40] if cut % 3 else buf
    if reseal_trailer and len(buf) > 18:
        buf[-4:] = struct.pack("<I", zlib.crc32(bytes(buf[:-4])))
    check(bytes(buf))


@FUZZ
@given(st.sampled_from(POOL), st.sampled_from(POOL), st.integers(0, 10**6), st.integers(0, 10**6))
def test_splices(a, b, i, j):
    check(a[: i % len(a)] + b[j % len(b) :])
    check(a + b[j % len(b) :])


@FUZZ
@given(st.sampled_from(POOL), st.integers(0, 10**6), st.data())
def test_corrupted_streams_with_valid_crcs(data, which, draw):
    header, body = split(data)
    table = header["streams"]
    if not table["length"]:
        return
    index = which % len(table["length"])
    stream = bytearray(body[table["offset"][index] : table["offset"][index] + table["length"][index]])
    kind = draw.draw(st.sampled_from(["flip", "truncate", "extend", "replace", "byte"]))
    if kind == "flip" and stream:
        for pos in draw.draw(st.lists(st.integers(0, 8 * len(stream) - 1), min_size=1, max_size=4)):
            stream[pos // 8] ^= 0x80 >> (pos % 8)
    elif kind == "truncate":
        stream = stream[: draw.draw(st.integers(0, len(stream)))]
    elif kind == "extend":
        stream += draw.draw(st.binary(min_size=1, max_size=20))
    elif kind == "replace":
        stream = bytearray(draw.draw(st.binary(max_size=60)))
    elif stream:
        stream[draw.draw(st.integers(0, len(stream) - 1))] = draw.draw(st.integers(0, 255))
    check(restream(data, index, bytes(stream)))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, 7, 2**31, 2**36, -1])
    | st.text(max_size=4)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(st.sampled_from(POOL), st.data())
def test_mutated_headers(data, draw):
    header, body = split(data)
    target, key = header, draw.draw(st.sampled_from(sorted(header)))
    for _ in range(draw.draw(st.integers(0, 3))):  # walk down a random path
        child = target[key]
        if not isinstance(child, (dict, list)) or not child:
            break
        target, key = (
            child,
            draw.draw(st.sampled_from(sorted(child) if isinstance(child, dict) else list(range(len(child))))),
        )
    action = draw.draw(st.sampled_from(["replace", "delete", "number"]))
    if action == "delete":
        del target[key]
    elif action == "number" and isinstance(target[key], int) and not isinstance(target[key], bool):
        target[key] += draw.draw(st.sampled_from([-1, 1, 2**31, -(2**31), 10**9]))
    else:
        target[key] = draw.draw(JSON_VALUES)
    check(seal(header, body))
    check(seal(None, body, raw_header=json.dumps(header).encode()))


def check_bounded(data: bytes, max_bits: int | None) -> int:
    """check() and the tracemalloc peak of the decode (bytes); whatever it accepts can be written back."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        packed = check(data, max_bits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if packed is not None:  # accepted names, meta and numbers must survive a rewrite (findings 2-4)
        again = unpack(pack(packed.layers, packed.task_ids, packed.codec, packed.meta), max_bits=max_bits)
        assert (again.task_ids, again.meta, [layer.name for layer in again.layers]) == (
            packed.task_ids,
            packed.meta,
            [layer.name for layer in packed.layers],
        )
    return peak


def test_pool_has_every_codec():
    assert sorted({split(data)[0]["codec"] for data in POOL}) == sorted(CODECS)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(POOL), st.randoms(use_true_random=False))
def test_structure_aware_mutants(data, rng):
    kind, mutant = mutate_structure(data, rng)
    assert check_bounded(mutant, STRUCTURE_MAX_BITS) < MAX_PEAK_BYTES, kind


def test_structure_aware_mutants_at_the_default_limit():
    """A fixed seeded batch with the default decoded-size limit: nothing but FormatError, memory bounded."""
    rng = random.Random(20240501)
    for i in range(300):
        kind, mutant = mutate_structure(POOL[i % len(POOL)], rng)
        assert check_bounded(mutant, None) < MAX_PEAK_BYTES, (i, kind)
