"""The checkpoint: version-2 layout (safetensors), bit-exact round trips, version 1 still loads,
refusals by name, signatures, and never writing a file the loader would refuse."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import formats
from tests.ckpt_tools import edit_arrays, edit_meta, read_parts, write_parts
from tests.conftest import CONV_SHAPE, torch_threads
from wsncli.engine.data.preprocess import scaled
from wsncli.engine.nn.models import ModelConfig
from wsncli.engine.store.checkpoint import Checkpoint, checkpoint_arrays, load_checkpoint, save_checkpoint
from wsncli.engine.store.container import FORMAT_NAME, FORMAT_VERSION, tensor_digest
from wsncli.engine.store.paths import plan_output
from wsncli.engine.store.schema import CheckpointMeta, TaskRecord, from_model_config
from wsncli.errors import CheckpointError

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "checkpoints"
DIGEST = "0" * 64


def _save(ckpt: Checkpoint, path: Path) -> int:
    return save_checkpoint(ckpt, plan_output(path, what="checkpoint", allow_stream=False))


def _assert_same(a: Checkpoint, b: Checkpoint) -> None:
    ta, tb = checkpoint_arrays(a), checkpoint_arrays(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and np.array_equal(ta[key], tb[key]), key
    assert a.masks.keys() == b.masks.keys()
    for task in a.masks:
        for name in a.masks[task]:
            assert torch.equal(a.masks[task][name].cpu(), b.masks[task][name]), (task, name)
    assert a.meta == b.meta


def _conv_checkpoint(conv_run) -> Checkpoint:
    meta = CheckpointMeta(
        benchmark="npz", model=from_model_config(ModelConfig("conv", CONV_SHAPE)), seed=0, method="wsn"
    )
    meta.tasks = [
        TaskRecord(
            task=t,
            order=t,
            n_classes=2,
            classes=[0, 1],
            method="wsn",
            capacity=0.1,
            accuracy=0.5,
            n_test=16,
            outputs_digest=DIGEST,
            subnet_digest=DIGEST,
            data_digest=DIGEST,
            preprocess=None,
            digest_version=1,
        )
        for t in (1, 2, 3)
    ]
    return Checkpoint(meta=meta, model=conv_run.model, masks=conv_run.masks)


# ---- layout ----------------------------------------------------------------------------------------


def test_version_3_is_a_safetensors_file_with_wsn_metadata(digits_ckpt):
    raw = digits_ckpt.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    md = header["__metadata__"]
    assert md["format"] == FORMAT_NAME == "wsn-checkpoint" and md["version"] == str(FORMAT_VERSION) == "3"
    assert set(md) == {"format", "version", "meta", "meta_sha256", "checksums"}
    meta = json.loads(md["meta"])
    assert [r["task"] for r in meta["tasks"]] == [2, 1, 3]
    names = set(header) - {"__metadata__"}
    for t in (1, 2, 3):
        assert {f"head/{t}/weight", f"head/{t}/bias", f"prep/{t}/mean", f"prep/{t}/std", f"pred/{t}"} <= names
    assert {
        "layer/layers.0/weight",
        "layer/layers.0/scores",
        "layer/layers.1/weight",
        "layer/layers.1/scores",
        "masks",
    } <= names
    assert not any(k.startswith("mask/") for k in names)  # version 1's packbits tensors are gone
    sums = json.loads(md["checksums"])
    _, arrays = read_parts(digits_ckpt)
    assert set(sums) == names and all(sums[k] == tensor_digest(arrays[k]) for k in names)


def test_masks_tensor_is_a_wsnm_file_never_larger_than_packbits(digits_ckpt):
    _, arrays = read_parts(digits_ckpt)
    blob = arrays["masks"].tobytes()
    packed = formats.unpack(blob)
    assert packed.task_ids == [2, 1, 3] and [l.name for l in packed.layers] == ["layers.0", "layers.1"]
    ckpt = load_checkpoint(digits_ckpt)
    for layer in packed.layers:
        for t, mask in zip(packed.task_ids, layer.masks):
            assert np.array_equal(mask, ckpt.masks[t][layer.name].numpy().reshape(-1))
    packbits = sum(math.ceil(l.masks[0].size / 8) for l in packed.layers) * 3
    assert len(blob) <= packbits + 2048  # + the .wsnm header: the codec is the smallest one
    assert ckpt.mask_codec == packed.codec


# ---- round trips -----------------------------------------------------------------------------------


def test_conv_checkpoint_round_trip_is_bit_identical(conv_run, tmp_path):
    """Weights, scores, heads, per-task BatchNorm statistics and masks survive save + load."""
    original = _conv_checkpoint(conv_run)
    path = tmp_path / "conv.pt"
    assert _save(original, path) == path.stat().st_size
    loaded = load_checkpoint(path)
    _assert_same(original, loaded)
    assert not loaded.tampered and loaded.version == 3
    assert any(k.startswith("norm/1/") and k.endswith("running_var") for k in checkpoint_arrays(loaded))
    from wsncli.engine.usecases.outputs import set_task_mode

    set_task_mode(loaded.model, loaded.masks[1])
    with torch.no_grad(), torch_threads(conv_run.threads):
        assert torch.equal(loaded.model(torch.from_numpy(conv_run.data[1].x_test), 1), conv_run.logits[1])


def test_digits_checkpoint_survives_load_save_load(digits_ckpt, tmp_path):
    first = load_checkpoint(digits_ckpt)
    again = tmp_path / "again.pt"
    _save(first, again)
    _assert_same(first, load_checkpoint(again))
    assert again.read_bytes() == digits_ckpt.read_bytes()  # deterministic bytes


@pytest.mark.parametrize("name", ["v1-digits-wsn.pt", "v1-digits-finetune.pt"])
def test_golden_version_1_checkpoints_still_load(name):
    ckpt = load_checkpoint(GOLDEN / name)
    assert ckpt.version == 1 and ckpt.mask_codec == "packbits"
    assert all(r.digest_version == 1 and r.preprocess is None for r in ckpt.tasks)
    if "finetune" in name:
        assert ckpt.learned() == [1] and ckpt.masks == {} and ckpt.tasks[0].capacity is None
    else:
        assert ckpt.learned() == [2, 1]
        k = [round(0.3 * 20 * 64), round(0.3 * 20 * 20)]
        assert [int(ckpt.masks[2][n].sum()) for n in ("layers.0", "layers.1")] == k
        assert [l.name for l in ckpt.meta.layers] == ["layers.0", "layers.1"]


def test_a_version_1_checkpoint_is_written_back_as_version_3(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes((GOLDEN / "v1-digits-wsn.pt").read_bytes())
    old = load_checkpoint(path)
    _save(old, path)
    new = load_checkpoint(path)
    assert new.version == 3 and new.learned() == [2, 1]
    assert all(r.digest_version == 1 and r.record_digest for r in new.tasks)  # old digests kept, records stamped
    _assert_same(old, new)


# ---- refusals by name -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", "4", "format version '4' is not supported (this wsn reads version 2 and 3)"),
        ("format", "other-checkpoint", "not a wsn checkpoint (format 'other-checkpoint')"),
    ],
)
def test_other_version_or_format_is_refused_by_name(digits_ckpt, field, value, message):
    metadata, arrays = read_parts(digits_ckpt)
    write_parts(digits_ckpt, {**metadata, field: value}, arrays)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(digits_ckpt)
    assert message in str(info.value) and str(digits_ckpt) in str(info.value)


def test_edited_metadata_fails_its_checksum(digits_ckpt):
    edit_meta(digits_ckpt, lambda m: m["tasks"][0].__setitem__("accuracy", 1.0), recompute=False)
    with pytest.raises(CheckpointError, match="metadata fails its checksum"):
        load_checkpoint(digits_ckpt)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["tasks"][0].__setitem__("batch_size", 2**70), "Expected `int` <= 16777216"),
        (lambda m: m["tasks"][0].__setitem__("accuracy", 1.5), "Expected `float` <= 1.0"),
        (lambda m: m["tasks"][1].__setitem__("order", 7), "order is 7, expected 2"),
        (lambda m: m["tasks"][1].__setitem__("task", 2), "task 2 is learned twice"),
        (lambda m: m["tasks"][0].__setitem__("surprise", 1), "unknown field `surprise`"),
        (lambda m: m["model"].__setitem__("arch", "transformer"), "meta.model.arch must be one of"),
        (lambda m: m["tasks"][0].__setitem__("classes", [5, 4]), "classes must be sorted and distinct"),
        (lambda m: m["tasks"][0].__setitem__("capacity", None), "capacity must be a fraction"),
        (lambda m: m["tasks"][0].__setitem__("preprocess", None), "meta.tasks[0].preprocess is missing"),
        (lambda m: m["model"].__setitem__("hidden", [65536, 65536]), "over the limit of"),
    ],
    ids=[
        "int-range",
        "fraction",
        "order",
        "duplicate",
        "unknown",
        "arch",
        "classes",
        "capacity",
        "no-transform",
        "too-big",
    ],
)
def test_metadata_is_checked_against_the_schema_even_with_valid_checksums(digits_ckpt, change, message):
    edit_meta(digits_ckpt, change)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(digits_ckpt)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_edited_masks_are_refused_but_an_edited_weight_is_only_flagged(digits_ckpt, tmp_path):
    original = digits_ckpt.read_bytes()

    def flip(arrays):
        arrays["masks"][len(arrays["masks"]) // 2] ^= 1

    edit_arrays(digits_ckpt, flip, recompute=False)
    with pytest.raises(CheckpointError, match="the masks tensor fails its checksum"):
        load_checkpoint(digits_ckpt)
    digits_ckpt.write_bytes(original)
    edit_arrays(digits_ckpt, lambda a: a["layer/layers.1/scores"].__iadd__(1.0), recompute=False)
    assert load_checkpoint(digits_ckpt).tampered == ["tensor 'layer/layers.1/scores' fails its checksum"]


def test_tensors_of_a_removed_task_record_are_reported(digits_ckpt):
    edit_meta(digits_ckpt, lambda m: m.__setitem__("tasks", m["tasks"][:2]))
    with pytest.raises(CheckpointError, match="not a valid packed-mask file for these 2 task records"):
        load_checkpoint(digits_ckpt)  # the masks still hold the removed task 3


def test_wrong_tensor_shape_is_a_malformed_checkpoint(digits_ckpt):
    edit_arrays(digits_ckpt, lambda a: a.__setitem__("head/1/weight", a["head/1/weight"][:1].copy()))
    with pytest.raises(
        CheckpointError, match=r"tensor 'head/1/weight' is float32 \(1, 100\), expected float32 \(2, 100\)"
    ):
        load_checkpoint(digits_ckpt)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.unlink(), "no such checkpoint"),
        (lambda p: p.write_bytes(b"hello, not a checkpoint"), "not a wsn checkpoint"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "describe"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"), "over the limit"),
    ],
    ids=["missing", "text", "truncated", "empty", "huge-header"],
)
def test_unreadable_files_are_one_line_checkpoint_errors(digits_ckpt, make, message):
    make(digits_ckpt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(digits_ckpt)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_used_weights_is_the_union_of_the_masks(digits_ckpt):
    ckpt = load_checkpoint(digits_ckpt)
    union = ckpt.used_weights()
    for name in union:
        assert torch.equal(union[name], ckpt.masks[2][name] | ckpt.masks[1][name] | ckpt.masks[3][name])
    assert torch.equal(ckpt.used_weights([2])["layers.1"], ckpt.masks[2]["layers.1"])


# ---- signatures ---------------------------------------------------------------------------------------


def test_signed_checkpoints_verify_and_refuse_edits_or_missing_signatures(digits_ckpt, tmp_path, monkeypatch):
    ckpt = load_checkpoint(digits_ckpt)
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "s3cret")
    signed = tmp_path / "signed.pt"
    _save(ckpt, signed)
    assert load_checkpoint(signed).signature == "verified"
    with pytest.raises(CheckpointError, match="is not signed, but WSN_CHECKPOINT_KEY is set"):
        load_checkpoint(digits_ckpt)
    edit_meta(signed, lambda m: m["tasks"][0].__setitem__("accuracy", 0.25))  # checksums recomputed, HMAC kept
    with pytest.raises(CheckpointError, match="fails its HMAC signature"):
        load_checkpoint(signed)
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "other")
    _save(ckpt, signed)
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "s3cret")
    with pytest.raises(CheckpointError, match="fails its HMAC signature"):
        load_checkpoint(signed)
    monkeypatch.delenv("WSN_CHECKPOINT_KEY")
    assert load_checkpoint(signed).signature == "unverified"


# ---- never save what cannot be read back ------------------------------------------------------------


def test_non_finite_weights_are_never_saved(digits_ckpt, tmp_path):
    ckpt = load_checkpoint(digits_ckpt)
    with torch.no_grad():
        ckpt.model.subnet_layers()["layers.0"].weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        _save(ckpt, tmp_path / "broken.pt")
    assert not (tmp_path / "broken.pt").exists()


def test_a_record_the_loader_would_refuse_is_never_written(digits_ckpt):
    before = digits_ckpt.read_bytes()
    ckpt = load_checkpoint(digits_ckpt)
    ckpt.tasks[0].batch_size = 2**70  # what --batch-size 2^70 recorded in wsn 0.1
    with pytest.raises(CheckpointError, match="would not load back"):
        _save(ckpt, digits_ckpt)
    assert digits_ckpt.read_bytes() == before


def test_transform_arrays_are_stored_and_checked(digits_ckpt, tmp_path):
    ckpt = load_checkpoint(digits_ckpt)
    prep, want = ckpt.preps[1], scaled(16.0, divide=True)
    assert (prep.scale, prep.divide, prep.permutation, prep.padding) == (want.scale, want.divide, None, 0)
    assert np.array_equal(prep.mean, want.mean) and np.array_equal(prep.std, want.std)
    edit_arrays(digits_ckpt, lambda a: a.__setitem__("prep/1/std", np.zeros(1, np.float32)))
    with pytest.raises(CheckpointError, match="non-finite values or std <= 0"):
        load_checkpoint(digits_ckpt)
