"""Every codec and the container give back exactly the masks they were given."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from formats import CODECS, FormatError, LayerMasks, codecs, describe, pack, unpack
from tests.formats.helpers import correlated_masks, random_masks, split

SIZES = st.one_of(st.sampled_from([0, 1, 7, 8, 9, 14, 15, 16]), st.integers(0, 3000))
DENSITIES = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.001, 0.999]), st.floats(0.0, 1.0))
QUICK = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layer_masks(draw, max_tasks=10):
    """One layer's masks: independent random ones, or correlated WSN-like ones."""
    n, tasks = draw(SIZES), draw(st.integers(1, max_tasks))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        return random_masks(rng, n, tasks, draw(DENSITIES))
    return correlated_masks(rng, n, tasks, draw(DENSITIES), noise=draw(st.sampled_from([0.05, 0.3, 2.0])))


def decode_layer(codec, streams, n, tasks):
    decoder = codecs.LayerDecoder(codec, n)
    out = []
    for group, stream in zip(codecs.stream_groups(codec, tasks), streams):
        out += decoder.decode(stream, len(group), "s")
    return out


@pytest.mark.parametrize("codec", CODECS)
@QUICK
@given(masks=layer_masks())
def test_codec_round_trip(codec, masks):
    streams = codecs.encode_layer(codec, masks)
    decoded = decode_layer(codec, streams, masks[0].size, len(masks))
    assert len(decoded) == len(masks)
    for mask, back in zip(masks, decoded):
        assert back.dtype == bool and np.array_equal(mask, back)


@pytest.mark.parametrize("codec", CODECS)
@QUICK
@given(data=st.data())
def test_container_round_trip(codec, data):
    n_layers = data.draw(st.integers(0, 3))
    tasks = data.draw(st.integers(0, 9))
    task_ids = data.draw(st.lists(st.integers(0, 2**31 - 1), min_size=tasks, max_size=tasks, unique=True))
    layers = []
    for i in range(n_layers):
        masks = data.draw(layer_masks()) if tasks else []
        masks = (masks * tasks)[:tasks]
        shape = data.draw(st.sampled_from([(len(masks[0]),), (1, len(masks[0]))])) if masks else (0,)
        layers.append(LayerMasks(f"layer.{i}", shape, masks))
    meta = data.draw(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
    packed = unpack(pack(layers, task_ids, codec, meta))
    assert (packed.version, packed.codec, packed.task_ids, packed.meta) == (1, codec, task_ids, meta)
    assert [(layer.name, layer.shape) for layer in packed.layers] == [(layer.name, layer.shape) for layer in layers]
    for want, got in zip(layers, packed.layers):
        assert all(np.array_equal(a, b) for a, b in zip(want.masks, got.masks))
        assert len(want.masks) == len(got.masks)


@pytest.mark.parametrize("codec", CODECS)
def test_edge_cases(codec):
    n = 23
    cases = {
        "zeros": np.zeros(n, bool),
        "ones": np.ones(n, bool),
        "one": np.eye(1, n, 5, dtype=bool)[0],
        "alternate": np.arange(n) % 2 == 0,
    }
    layers = [LayerMasks(name, (n,), [m, ~m, m, m]) for name, m in cases.items()]
    layers += [LayerMasks("empty", (0, 4), [np.zeros(0, bool)] * 4), LayerMasks("scalar", (), [np.ones(1, bool)] * 4)]
    packed = unpack(pack(layers, [1, 2, 3, 4], codec))
    for want, got in zip(layers, packed.layers):
        assert got.shape == tuple(want.shape)
        assert all(np.array_equal(a, b) for a, b in zip(want.masks, got.masks))


def test_ten_million_bits():
    rng = np.random.default_rng(1)
    masks = correlated_masks(rng, 10_000_000, 2, 0.1)
    for codec in ("context", "ascii7-huffman", "paper-huffman"):
        packed = unpack(pack([LayerMasks("big", (10_000_000,), masks)], [0, 1], codec))
        assert all(np.array_equal(a, b) for a, b in zip(masks, packed.layers[0].masks)), codec


def test_header_is_canonical_json():
    data = pack([LayerMasks("fc", (3,), [np.array([1, 0, 1], bool)])], [7], meta={"b": 1, "a": "é"})
    header, _ = split(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert raw in data
    assert header["ones"] == [[2]] and header["task_ids"] == [7]


def test_integer_masks_and_shapes_are_accepted():
    mask = np.array([[1, 0], [0, 1]], dtype=np.uint8)
    packed = unpack(pack([LayerMasks("conv", (2, 2), [mask])], [np.int64(3)]))
    assert packed.task_ids == [3] and packed.layers[0].masks[0].tolist() == [True, False, False, True]


@pytest.mark.parametrize(
    ("layers", "task_ids", "codec", "meta", "message"),
    [
        (
            [],
            [],
            "zstd",
            None,
            "unknown codec 'zstd' (known: context, ascii7, ascii7-huffman, paper-huffman, packbits, auto)",
        ),
        (
            [LayerMasks("a", (2,), [np.zeros(3, bool)])],
            [1],
            "context",
            None,
            "layer 'a', task 1: mask has 3 elements, the layer shape needs 2",
        ),
        (
            [LayerMasks("a", (2,), [np.array([0.5, 1.0])])],
            [1],
            "context",
            None,
            "layer 'a', task 1: mask must be boolean (got dtype float64)",
        ),
        ([LayerMasks("a", (2,), [])], [1], "context", None, "layer 'a': 0 masks for 1 tasks"),
        ([], [1, 1], "context", None, "task ids are not unique"),
        ([], [True], "context", None, "task ids and shapes must be integers, got True"),
        ([], [], "context", {"x": float("nan")}, "meta must be a dict of plain JSON values (str keys, no NaN)"),
        ([LayerMasks("a", (2,), []), LayerMasks("a", (2,), [])], [], "context", None, "layer name 'a' appears twice"),
    ],
)
def test_pack_rejects_bad_input(layers, task_ids, codec, meta, message):
    with pytest.raises(FormatError) as err:
        pack(layers, task_ids, codec, meta)
    assert str(err.value) == message


def test_describe_reports_streams():
    rng = np.random.default_rng(3)
    layers = [
        LayerMasks("fc1", (10, 20), correlated_masks(rng, 200, 3, 0.2)),
        LayerMasks("fc2", (50,), correlated_masks(rng, 50, 3, 0.2)),
    ]
    data = pack(layers, [5, 6, 7], "context", {"run": "x"})
    info = describe(data)
    assert info["checksums_ok"] is True
    assert (info["codec"], info["tasks"], info["weights"], info["bytes"]) == ("context", 3, 250, len(data))
    assert [s["layer"] for s in info["streams"]] == ["fc1", "fc2"] * 3
    assert info["streams"][2]["task_ids"] == [6] and info["streams"][2]["ones"] == [40]
    assert info["payload_bytes"] == sum(s["bytes"] for s in info["streams"])
    assert json.loads(json.dumps(info)) == info
    with pytest.raises(FormatError):
        describe(data[:-1])
