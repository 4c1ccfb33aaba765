"""Compressed sizes against the entropy bounds, the REFERENCE.md figures, and the storage report."""

import json
import time

import numpy as np
import pytest

from formats import LayerMasks, codecs, context, pack, storage_report, unpack
from formats.stats import conditional_entropy_bits, entropy_bits, mask_entropy_bits
from tests.formats.helpers import correlated_masks


@pytest.mark.parametrize("capacity", [0.03, 0.1, 0.3, 0.5])
@pytest.mark.parametrize("noise", [0.1, 0.5, 2.0])
def test_context_within_3_percent_of_conditional_bound(capacity, noise):
    masks = correlated_masks(np.random.default_rng(7), 200_000, 8, capacity, noise)
    streams = context.encode_layer(masks)
    bound = conditional_entropy_bits(masks)
    coded = sum(8 * len(s) for s in streams)
    assert coded <= 1.03 * sum(bound) + 8 * 64 * len(masks)
    assert coded <= 1.03 * sum(bound)  # side information is far below 64 bytes here


@pytest.mark.parametrize("density", [0.005, 0.03, 0.1, 0.2, 0.3, 0.38, 0.42, 0.5, 0.7, 0.97])
def test_first_task_within_3_percent_of_entropy(density):
    mask = np.random.default_rng(3).random(300_000) < density
    coded = 8 * len(context.encode_layer([mask])[0])
    assert coded <= 1.03 * mask_entropy_bits(mask)


@pytest.mark.parametrize(("density", "reference"), [(0.03, 0.237), (0.1, 0.475), (0.3, 0.885), (0.5, 1.000)])
@pytest.mark.parametrize("codec", ["ascii7-huffman", "paper-huffman"])
def test_ascii7_huffman_matches_reference(codec, density, reference):
    """REFERENCE.md 4: 7-bit ASCII + Huffman on random masks (7 independent tasks for paper grouping)."""
    rng = np.random.default_rng(11)
    masks = [rng.random(1_000_000) < density for _ in range(7)]
    bits = sum(8 * len(s) for s in codecs.encode_layer(codec, masks)) / (7 * 1_000_000)
    assert bits == pytest.approx(reference, rel=0.02)


def test_entropy_helpers():
    assert entropy_bits(0, 10) == entropy_bits(10, 10) == 0.0
    assert entropy_bits(5, 10) == pytest.approx(10.0)
    assert entropy_bits(3, 100) / 100 == pytest.approx(0.1944, abs=1e-4)
    masks = [np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)]
    # task 2: context 2 = weights {0,1} with one set, context 0 = {2,3} with one set
    assert conditional_entropy_bits(masks) == pytest.approx([4.0, 4.0])


def test_storage_report_keys_and_values():
    rng = np.random.default_rng(2)
    layers = [
        LayerMasks("fc1", (100, 64), correlated_masks(rng, 6400, 9, 0.1)),
        LayerMasks("fc2", (10000,), correlated_masks(rng, 10000, 9, 0.1)),
    ]
    task_ids = list(range(1, 10))
    data = pack(layers, task_ids)
    report = storage_report(layers, task_ids, "context", packed_size=len(data))
    assert json.loads(json.dumps(report)) == report
    assert {
        "codec",
        "tasks",
        "weights",
        "bytes",
        "bits_per_weight_per_task",
        "baselines",
        "bounds",
        "saving_vs_packbits",
        "per_task",
        "per_layer",
    } <= report.keys()
    assert (report["codec"], report["tasks"], report["weights"], report["bytes"]) == ("context", 9, 16400, len(data))
    base = report["baselines"]
    # ascii7 pads each layer to a multiple of 7 bits
    assert (base["float32"], base["bool"], base["packbits"], base["ascii7"]) == (32.0, 8.0, 1.0, 1.1434)
    assert report["bounds"]["conditional"] < report["bits_per_weight_per_task"] < base["paper_huffman"]
    assert report["bounds"]["conditional"] < report["bounds"]["independent"]
    assert report["saving_vs_packbits"] == pytest.approx(1 - len(data) / (2050 * 9), abs=1e-4)
    assert [t["task"] for t in report["per_task"]] == task_ids
    assert [layer["layer"] for layer in report["per_layer"]] == ["fc1", "fc2"]
    # a paper group's bits are split evenly over its tasks: per-task sizes add up to the total
    paper_bits = sum(8 * len(s) for layer in layers for s in codecs.encode_layer("paper-huffman", layer.masks))
    per_task_paper = sum(t["baselines"]["paper_huffman"] * 16400 for t in report["per_task"])
    assert per_task_paper == pytest.approx(paper_bits, rel=1e-3)
    assert report["per_task"][0]["bounds"]["conditional"] == report["per_task"][0]["bounds"]["independent"]


def test_storage_report_without_file_counts_streams():
    layers = [LayerMasks("fc", (70,), [np.arange(70) % 3 == 0] * 2)]
    report = storage_report(layers, [0, 1], "packbits")
    assert report["bytes"] == report["payload_bytes"] == 18
    assert report["bits_per_weight_per_task"] == pytest.approx(18 * 8 / 140, abs=1e-4)


def test_context_codec_is_vectorised():
    """A loose floor (the benchmark measures the real >= 100 Mbit/s); catches per-bit Python loops."""
    masks = correlated_masks(np.random.default_rng(4), 2_000_000, 3, 0.1)
    layers = [LayerMasks("fc", (2_000_000,), masks)]
    best_encode = best_decode = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        data = pack(layers, [0, 1, 2])
        middle = time.perf_counter()
        unpack(data)
        best_encode = min(best_encode, middle - start)
        best_decode = min(best_decode, time.perf_counter() - middle)
    assert 6e6 / best_encode > 25e6 and 6e6 / best_decode > 25e6
