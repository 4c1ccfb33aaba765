"""`pack(..., codec="auto")`: the smallest file any codec writes, recorded under its real codec."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import AUTO, CODECS, PACK_CODECS, FormatError, LayerMasks, auto_codec, pack, storage_report, unpack
from formats.header import MAX_HEADER_BYTES
from tests.formats.helpers import correlated_masks, random_masks, seal, split

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_pack_codecs():
    assert PACK_CODECS == (*CODECS, "auto") and AUTO == "auto" and AUTO not in CODECS


@st.composite
def mask_sets(draw):
    """1-3 layers, 1-9 tasks: independent random masks or correlated WSN-like ones."""
    tasks = draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layers = []
    for i in range(draw(st.integers(1, 3))):
        n = draw(st.sampled_from([1, 7, 8, 64, 500, 3000]))
        density = draw(st.sampled_from([0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0]))
        masks = (
            correlated_masks(rng, n, tasks, density, draw(st.sampled_from([0.05, 0.5, 2.0])))
            if draw(st.booleans())
            else random_masks(rng, n, tasks, density)
        )
        layers.append(LayerMasks(f"l{i}", (n,), masks))
    return layers, list(range(10, 10 + tasks))


@PROPERTY
@given(mask_sets())
def test_auto_is_never_larger_than_any_codec(case):
    layers, task_ids = case
    files = {codec: pack(layers, task_ids, codec, {"run": "x"}) for codec in CODECS}
    data = pack(layers, task_ids, "auto", {"run": "x"})
    assert all(len(data) <= len(other) for other in files.values())
    chosen = split(data)[0]["codec"]
    smallest = min(len(f) for f in files.values())
    assert chosen == next(c for c in CODECS if len(files[c]) == smallest)  # ties: first in CODECS
    assert data == files[chosen] and auto_codec(layers, task_ids, {"run": "x"}) == chosen
    packed = unpack(data)
    assert packed.codec == chosen
    for want, got in zip(layers, packed.layers):
        assert all(np.array_equal(a, b) for a, b in zip(want.masks, got.masks))


@pytest.mark.parametrize(
    ("masks", "sizes", "chosen"),
    [
        ([np.ones(6, bool)], {"context": 171, "ascii7": 171, "packbits": 173}, "context"),
        ([np.arange(3) % 2 == 0], {"context": 173, "ascii7": 171, "packbits": 171}, "ascii7"),
    ],
)
def test_ties_go_to_the_first_codec(masks, sizes, chosen):
    layers = [LayerMasks("fc", (masks[0].size,), masks)]
    assert {c: len(pack(layers, [1], c)) for c in sizes} == sizes
    assert split(pack(layers, [1], "auto"))[0]["codec"] == chosen


def test_correlated_masks_pick_context_and_sparse_ones_not_packbits():
    rng = np.random.default_rng(1)
    layers = [LayerMasks("fc", (20_000,), correlated_masks(rng, 20_000, 5, 0.1))]
    assert split(pack(layers, list(range(5)), "auto"))[0]["codec"] == "context"
    dense = [LayerMasks("fc", (4000,), random_masks(rng, 4000, 1, 0.5))]
    assert split(pack(dense, [1], "auto"))[0]["codec"] in ("packbits", "context")


def test_auto_skips_a_codec_whose_header_would_be_too_large():
    """1500 layers x 40 tasks: one stream per task overflows the 1 MiB header; paper-huffman's groups fit."""
    layers = [LayerMasks(f"layer.{i:04d}", (1,), [np.ones(1, bool)] * 40) for i in range(1500)]
    task_ids = list(range(40))
    with pytest.raises(FormatError, match=f"exceeds the limit of {MAX_HEADER_BYTES}"):
        pack(layers, task_ids, "context")
    data = pack(layers, task_ids, "auto")
    assert split(data)[0]["codec"] == "paper-huffman" and unpack(data).codec == "paper-huffman"


def test_storage_report_for_auto_names_the_chosen_codec():
    rng = np.random.default_rng(2)
    layers = [LayerMasks("fc", (5000,), correlated_masks(rng, 5000, 4, 0.1))]
    data = pack(layers, [1, 2, 3, 4], "auto")
    chosen = split(data)[0]["codec"]
    report = storage_report(layers, [1, 2, 3, 4], "auto", packed_size=len(data))
    assert (report["codec"], report["requested_codec"], report["bytes"]) == (chosen, "auto", len(data))
    direct = storage_report(layers, [1, 2, 3, 4], chosen, packed_size=len(data))
    assert direct["requested_codec"] == chosen
    assert {**report, "requested_codec": chosen} == direct
    with pytest.raises(FormatError, match="unknown codec 'zstd'"):
        storage_report(layers, [1, 2, 3, 4], "zstd")


def test_a_file_never_says_auto():
    layers = [LayerMasks("fc", (8,), [np.ones(8, bool)])]
    header, body = split(pack(layers, [1], "context"))
    header["codec"] = "auto"
    with pytest.raises(
        FormatError,
        match="header: unknown codec 'auto' \\(known: context, ascii7, ascii7-huffman, paper-huffman, packbits\\)",
    ):
        unpack(seal(header, body))
