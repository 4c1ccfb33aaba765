"""`wsn pack-masks`, `wsn unpack-masks` and `wsn inspect` on .wsnm files: masks survive bit for bit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import formats
from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from tests.conftest import DIGITS_ORDER
from wsncli.engine.store.checkpoint import load_checkpoint

LAYERS = {"layers.0": (100, 64), "layers.1": (100, 100)}
WEIGHTS = sum(math.prod(s) for s in LAYERS.values())
BASELINES = {"float32", "bool", "packbits", "ascii7", "ascii7_huffman", "paper_huffman"}


@pytest.fixture
def packed(digits_ckpt):
    """(checkpoint, .wsnm path, the pack report) with the default codec."""
    out = digits_ckpt.with_name("m.wsnm")
    doc = json_out(wsn("pack-masks", "--ckpt", digits_ckpt, "-o", out, "--json"))
    assert doc["schema"] == "wsn.pack-masks/1" and doc["checkpoint"] == str(digits_ckpt) and doc["output"] == str(out)
    return digits_ckpt, out, doc["report"]


def test_pack_report_json(packed):
    _, out, report = packed
    assert report["requested_codec"] == "auto" and report["codec"] in formats.CODECS and report["verified"] is True
    assert report["tasks"] == len(DIGITS_ORDER) and report["weights"] == WEIGHTS
    assert report["bytes"] == out.stat().st_size
    assert report["bits_per_weight_per_task"] == pytest.approx(
        8 * report["bytes"] / (WEIGHTS * len(DIGITS_ORDER)), rel=1e-3
    )
    assert set(report["baselines"]) >= BASELINES
    assert report["baselines"]["float32"] == 32.0 and report["baselines"]["bool"] == 8.0
    assert report["baselines"]["packbits"] == pytest.approx(1.0, abs=0.01)
    assert set(report["bounds"]) >= {"independent", "conditional"}
    assert 0 < report["bounds"]["conditional"] <= report["bounds"]["independent"] <= 1.0
    # the masks are correlated across tasks: the context codec beats one bit per weight per task
    assert report["bits_per_weight_per_task"] < 1.0


def test_pack_table_goes_to_stdout(digits_ckpt):
    result = wsn("pack-masks", "--ckpt", digits_ckpt, "-o", digits_ckpt.with_name("t.wsnm"))
    assert_ok(result)
    assert "verified bit for bit" in result.stdout and "packbits" in result.stdout


def _npz_masks(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("codec", list(getattr(formats, "CODECS", ())))
def test_every_codec_round_trips_the_checkpoint_masks_bit_for_bit(digits_ckpt, codec):
    out, masks_npz = digits_ckpt.with_name(f"{codec}.wsnm"), digits_ckpt.with_name(f"{codec}.npz")
    doc = json_out(wsn("pack-masks", "--ckpt", digits_ckpt, "-o", out, "--codec", codec, "--json"))
    assert doc["codec"] == doc["requested_codec"] == codec and doc["report"]["verified"] is True
    summary = json_out(wsn("unpack-masks", out, "--ckpt", digits_ckpt, "-o", masks_npz, "--json"))
    assert (
        summary["schema"] == "wsn.unpack-masks/1"
        and summary["task_ids"] == list(DIGITS_ORDER)
        and summary["codec"] == codec
    )
    assert summary["matches_checkpoint"] is True and summary["checkpoint"] == str(digits_ckpt)
    arrays = _npz_masks(masks_npz)
    ckpt = load_checkpoint(digits_ckpt)
    assert set(arrays) == {f"task{t}/{name}" for t in DIGITS_ORDER for name in LAYERS}
    for t in DIGITS_ORDER:
        for name, shape in LAYERS.items():
            got = arrays[f"task{t}/{name}"]
            assert got.dtype == np.bool_ and got.shape == shape
            assert np.array_equal(got, ckpt.masks[t][name].numpy()), (codec, t, name)


def test_pack_to_stdout_writes_only_the_file_and_reports_on_stderr(packed):
    ckpt, out, _ = packed
    result = wsn("pack-masks", "--ckpt", ckpt, "-o", "-", "--json")
    assert_ok(result)
    assert result.stdout_bytes == out.read_bytes()  # the same bytes as the file
    assert result.stdout_bytes[:4] == b"WSNM"
    doc = json.loads(result.stderr.strip().splitlines()[-1])
    assert doc["report"]["verified"] is True and doc["bytes"] == len(result.stdout_bytes)
    table = wsn("pack-masks", "--ckpt", ckpt, "-o", "-")
    assert_ok(table)
    assert table.stdout_bytes == out.read_bytes() and "packbits" in table.stderr


def test_inspect_a_packed_file(packed):
    _, out, report = packed
    d = json_out(wsn("inspect", out, "--json"))
    assert d["schema"] == "wsn.inspect/1" and d["kind"] == "packed-masks" and d["file"] == str(out)
    assert d["codec"] == report["codec"] and d["task_ids"] == list(DIGITS_ORDER)
    assert d["weights"] == WEIGHTS and d["bytes"] == report["bytes"] == out.stat().st_size
    assert [(l["name"], tuple(l["shape"])) for l in d["layers"]] == list(LAYERS.items())
    assert d["checksums_ok"] is True and d["meta"]["source"] == "m.pt"
    assert_ok(wsn("inspect", out))


def _corrupt(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flipped-byte":
        data[len(data) * 2 // 3] ^= 0x40
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "trailing-garbage":
        data += b"\0\0\0\0"
    elif how == "bad-magic":
        data[:8] = b"WSNMXXXX"
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped-byte", "truncated", "trailing-garbage", "bad-magic", "empty"])
def test_a_damaged_packed_file_is_refused_with_one_line(packed, how):
    ckpt, out, _ = packed
    _corrupt(out, how)
    assert_error(wsn("unpack-masks", out), 1)
    assert_error(wsn("unpack-masks", out, "--ckpt", ckpt, "-o", out.with_name("x.npz")), 1)
    assert not out.with_name("x.npz").exists()
    assert_error(wsn("inspect", out, "--json"), 1)


def test_unpack_against_another_checkpoint_is_refused(packed, digits_run):
    _, out, _ = packed
    first_only = digits_run.after[DIGITS_ORDER[0]]
    assert_error(wsn("unpack-masks", out, "--ckpt", first_only), 1, "differ")


def test_pack_refusals(digits_ckpt, finetune_ckpt, tmp_path):
    assert_error(
        wsn("pack-masks", "--ckpt", digits_ckpt, "-o", tmp_path / "x.wsnm", "--codec", "zip"),
        2,
        "Invalid value for '--codec'",
    )
    assert_error(wsn("pack-masks", "--ckpt", finetune_ckpt, "-o", tmp_path / "y.wsnm"), 1, "no task masks to pack")
    assert_error(wsn("pack-masks", "--ckpt", tmp_path / "none.pt", "-o", tmp_path / "z.wsnm"), 1, "no such checkpoint")
    assert_error(wsn("unpack-masks", tmp_path / "none.wsnm"), 1, "no such packed-mask file")
    assert not any(p.suffix == ".wsnm" for p in tmp_path.iterdir())
