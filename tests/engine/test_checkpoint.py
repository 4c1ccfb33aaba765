"""The checkpoint: bit-exact round trip, packed masks, weights_only loading, versions, corruption."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CONV_SHAPE, torch_threads
from wsncli.engine.nn.models import ModelConfig
from wsncli.engine.store.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Checkpoint,
    checkpoint_tensors,
    load_checkpoint,
    new_meta,
    pack_mask,
    save_checkpoint,
    tensor_digest,
    unpack_mask,
)
from wsncli.errors import CheckpointError


def _payload(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_checkpoint(a: Checkpoint, b: Checkpoint) -> None:
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
    assert a.masks.keys() == b.masks.keys()
    for task in a.masks:
        for name in a.masks[task]:
            assert torch.equal(a.masks[task][name], b.masks[task][name]), (task, name)
    assert a.meta == b.meta


# ---- mask bits ------------------------------------------------------------------------------------


def test_pack_mask_golden_bytes():
    """numpy packbits order: first weight in the high bit, flat C order, last byte zero-padded."""
    mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)  # 18 bits
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0b10000001, 0b10100000, 0b01000000]
    assert torch.equal(unpack_mask(packed, (2, 9)), mask)


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 2**31), p=st.floats(0, 1))
def test_pack_unpack_round_trip(shape, seed, p):
    mask = torch.from_numpy(np.random.default_rng(seed).random(shape) < p)
    packed = pack_mask(mask)
    assert packed.numel() == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_mask(packed, tuple(shape)), mask)


def test_tensor_digest_covers_dtype_shape_and_bytes():
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(t) == tensor_digest(t.clone())
    assert tensor_digest(t) != tensor_digest(t.reshape(2, 3))
    assert tensor_digest(t) != tensor_digest(t.double())
    u = t.clone()
    u[3] = 3.0000002
    assert tensor_digest(t) != tensor_digest(u)


# ---- round trips ------------------------------------------------------------------------------------


def test_conv_checkpoint_round_trip_is_bit_identical(conv_run, tmp_path):
    """Weights, scores, heads, per-task BatchNorm statistics and masks survive save + load."""
    meta = new_meta("npz", None, ModelConfig("conv", CONV_SHAPE), 0, "wsn", None)
    digest = "0" * 64  # the schema wants the fields eval reads; their values do not matter here
    meta["tasks"] = [
        {"task": t, "order": t, "n_classes": 2, "method": "wsn", "capacity": 0.1, "accuracy": 0.5,
         "outputs_digest": digest, "subnet_digest": digest, "data_digest": digest}
        for t in (1, 2, 3)
    ]
    original = Checkpoint(meta=meta, model=conv_run.model, masks=conv_run.masks)
    path = tmp_path / "conv.pt"
    size = save_checkpoint(original, path)
    assert size == path.stat().st_size
    loaded = load_checkpoint(path)
    _assert_same_checkpoint(original, loaded)
    assert not loaded.tampered
    assert any(k.startswith("norm/1/") and k.endswith("running_var") for k in checkpoint_tensors(loaded))
    from wsncli.engine.lifecycle.evaluate import set_task_mode

    set_task_mode(loaded.model, loaded.masks[1])
    with torch.no_grad(), torch_threads(conv_run.threads):
        assert torch.equal(loaded.model(torch.from_numpy(conv_run.data[1].x_test), 1), conv_run.logits[1])


def test_digits_checkpoint_survives_load_save_load(digits_ckpt, tmp_path):
    first = load_checkpoint(digits_ckpt)
    again = tmp_path / "again.pt"
    save_checkpoint(first, again)
    _assert_same_checkpoint(first, load_checkpoint(again))
    # and the stored tensors are exactly the ones wsn wrote
    a, b = _payload(digits_ckpt)["tensors"], _payload(again)["tensors"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_masks_are_stored_as_packed_bits(digits_ckpt):
    payload = _payload(digits_ckpt)  # weights_only=True: no code runs on load
    assert payload["format"] == FORMAT_NAME and payload["version"] == FORMAT_VERSION
    tensors = payload["tensors"]
    layers = {"layers.0": 100 * 64, "layers.1": 100 * 100}
    learned = [r["task"] for r in payload["meta"]["tasks"]]
    mask_bytes = 0
    for task in learned:
        for name, n in layers.items():
            packed = tensors[f"mask/{task}/{name}"]
            assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(n / 8),)
            mask_bytes += packed.numel()
    assert mask_bytes * 8 <= sum(layers.values()) * len(learned) + 7 * len(layers) * len(learned)  # <= 1 bit/weight/task
    assert not any(k.startswith("mask/") and v.dtype != torch.uint8 for k, v in tensors.items())
    assert set(payload["checksums"]["tensors"]) == set(tensors)


# ---- versions and corruption -------------------------------------------------------------------------


def _rewrite(path, change):
    payload = _payload(path)
    change(payload)
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("version", 2, "checkpoint format version 2 is not supported (this wsn reads version 1)"),
        ("version", "1", "checkpoint format version '1' is not supported"),
        ("format", "other-checkpoint", "not a wsn checkpoint (format 'other-checkpoint')"),
    ],
)
def test_other_version_or_format_is_refused_by_name(digits_ckpt, key, value, message):
    _rewrite(digits_ckpt, lambda p: p.__setitem__(key, value))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(digits_ckpt)
    assert message in str(info.value) and str(digits_ckpt) in str(info.value)


def test_edited_metadata_fails_its_checksum(digits_ckpt):
    _rewrite(digits_ckpt, lambda p: p["meta"]["tasks"][0].__setitem__("accuracy", 1.0))
    with pytest.raises(CheckpointError, match="metadata fails its checksum"):
        load_checkpoint(digits_ckpt)


def test_edited_mask_is_refused_but_edited_weight_is_only_flagged(digits_ckpt):
    def flip_mask_bit(p):
        p["tensors"]["mask/1/layers.0"][0] ^= 1

    original = digits_ckpt.read_bytes()
    _rewrite(digits_ckpt, flip_mask_bit)
    with pytest.raises(CheckpointError, match=r"mask tensor 'mask/1/layers.0' fails its checksum"):
        load_checkpoint(digits_ckpt)
    digits_ckpt.write_bytes(original)
    _rewrite(digits_ckpt, lambda p: p["tensors"]["layer/layers.1/scores"].add_(1.0))
    assert load_checkpoint(digits_ckpt).tampered == ["layer/layers.1/scores"]


def test_tensor_without_checksum_is_refused(digits_ckpt):
    _rewrite(digits_ckpt, lambda p: p["checksums"]["tensors"].pop("head/1/weight"))
    with pytest.raises(CheckpointError, match="tensor 'head/1/weight' has no checksum"):
        load_checkpoint(digits_ckpt)


def test_wrong_tensor_shape_is_a_malformed_checkpoint(digits_ckpt):
    def shrink(p):
        p["tensors"]["layer/layers.0/weight"] = p["tensors"]["layer/layers.0/weight"][:10].clone()
        p["checksums"]["tensors"]["layer/layers.0/weight"] = tensor_digest(p["tensors"]["layer/layers.0/weight"])

    _rewrite(digits_ckpt, shrink)
    expected = r"malformed checkpoint: tensor 'layer/layers.0/weight' is torch.float32 \(10, 64\), expected torch.float32 \(100, 64\)"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(digits_ckpt)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.unlink(), "no such checkpoint"),
        (lambda p: p.write_bytes(b"hello, not a checkpoint"), "not a wsn checkpoint (no torch zip header)"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt"),
        (lambda p: torch.save([1, 2, 3], p), "top level is list"),
    ],
    ids=["missing", "not-zip", "truncated", "not-a-dict"],
)
def test_unreadable_files_are_one_line_checkpoint_errors(digits_ckpt, make, message):
    make(digits_ckpt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(digits_ckpt)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_used_weights_is_the_union_of_the_masks(digits_ckpt):
    ckpt = load_checkpoint(digits_ckpt)
    union = ckpt.used_weights()
    for name in union:
        expected = ckpt.masks[2][name] | ckpt.masks[1][name] | ckpt.masks[3][name]
        assert torch.equal(union[name], expected)
    only_first = ckpt.used_weights([2])
    assert torch.equal(only_first["layers.1"], ckpt.masks[2]["layers.1"])
