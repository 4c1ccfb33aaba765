"""Checked-in .wsnm files (tests/golden/, written by make_golden.py) must keep decoding, bit for bit."""

import numpy as np
import pytest

from formats import CODECS, describe, pack, unpack
from tests.golden.make_golden import META, SHAPES, TASK_IDS, golden_layers, golden_path


@pytest.mark.parametrize("codec", CODECS)
def test_golden_file_decodes_to_the_expected_masks(codec):
    packed = unpack(golden_path(codec).read_bytes())
    assert (packed.version, packed.codec, packed.task_ids, packed.meta) == (1, codec, TASK_IDS, META)
    expected = golden_layers()
    assert [(layer.name, layer.shape) for layer in packed.layers] == list(SHAPES.items())
    for want, got in zip(expected, packed.layers):
        assert len(got.masks) == len(TASK_IDS)
        for t, (a, b) in enumerate(zip(want.masks, got.masks)):
            assert np.array_equal(a, b), (codec, want.name, t)


@pytest.mark.parametrize("codec", CODECS)
def test_reencoding_gives_identical_bytes(codec):
    assert pack(golden_layers(), TASK_IDS, codec, META) == golden_path(codec).read_bytes()


def test_golden_masks_are_not_trivial():
    conv = golden_layers()[0].masks
    assert all(m.sum() == 11 for m in conv)  # round(0.3 * 36)
    assert not all(np.array_equal(conv[0], m) for m in conv[1:])
    assert describe(golden_path("context").read_bytes())["checksums_ok"] is True
