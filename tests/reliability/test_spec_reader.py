"""docs/CHECKPOINT.md is precise enough to write a second reader: tests/reliability/spec_reader.py,
written from the document alone, accepts wsn's own checkpoints (signed, finetune, BatchNorm) and
snapshots (which hold 0-d tensors: hashed with their stored shape `[]`), verifying every checksum,
the HMAC, the record digests and the subnetwork digests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reliability import spec_reader
from tests.reliability.trust_tools import interrupted, learn

KEY = "spec-reader-key"


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    """npz tasks of 1x9x9 images (a reduced ResNet-18, width 2, with per-task BatchNorm)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for task in (1, 2):
        x = rng.normal(size=(24, 1, 9, 9)).astype(np.float32)
        y = np.arange(24) % 2
        x[y == 1] += 0.5
        np.savez(folder / f"task{task}.npz", x_train=x[:16], y_train=y[:16], x_test=x[16:], y_test=y[16:])
    return folder


def test_a_signed_wsn_checkpoint_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", KEY)
    path = tmp_path / "m.pt"
    for task in (1, 2):
        learn(path, task, epochs=1)
    meta = spec_reader.verify_checkpoint(path.read_bytes(), KEY.encode())
    assert [r["task"] for r in meta["tasks"]] == [1, 2] and all(r["digest_version"] == 3 for r in meta["tasks"])
    with pytest.raises(spec_reader.SpecError, match="HMAC"):
        spec_reader.verify_checkpoint(path.read_bytes(), b"another key")


def test_a_finetune_checkpoint_verifies(tmp_path):
    path = tmp_path / "ft.pt"
    learn(path, 1, epochs=1, method="finetune")
    assert spec_reader.verify_checkpoint(path.read_bytes())["method"] == "finetune"


def test_a_batchnorm_checkpoint_and_its_snapshot_verify(tmp_path, image_data, monkeypatch):
    """The ResNet's norms (num_batches_tracked, stored [1]) in the checkpoint; the snapshot's 0-d
    tensors (num_batches_tracked, Adam's step) hashed as `[]`, as section 5 says."""
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", KEY)
    path = tmp_path / "c.pt"
    common = dict(benchmark="npz", arch="resnet18", width=2, data_root=image_data, batch_size=8)
    learn(path, 1, epochs=1, **common)
    meta = spec_reader.verify_checkpoint(path.read_bytes(), KEY.encode())
    _, arrays = spec_reader.read_container(path.read_bytes())
    assert meta["model"]["arch"] == "resnet18" and any(n.startswith("norm/1/") for n in arrays)
    snap = interrupted(path, 2, stop_after=1, epochs=3, **common)
    found = spec_reader.verify_snapshot(snap.read_bytes(), KEY.encode())
    zero_d = [n for n, a in found["arrays"].items() if a.ndim == 0]
    assert any(n.endswith("num_batches_tracked") for n in zero_d) and any(n.endswith("/step") for n in zero_d)
    assert found["state"]["epoch"] == 1 and found["identity"]["task"] == 2


def test_the_reader_notices_what_it_should(tmp_path):
    """It is a real check: an edited record or tensor, recomputed checksums and all, fails it."""
    from tests.ckpt_tools import edit_arrays, edit_meta

    path = tmp_path / "m.pt"
    learn(path, 1, epochs=1)
    raw = path.read_bytes()
    edit_meta(path, lambda m: m["tasks"][0].__setitem__("classes", [0, 2]))
    with pytest.raises(spec_reader.SpecError, match="record digest fails"):
        spec_reader.verify_checkpoint(path.read_bytes())
    path.write_bytes(raw)
    edit_arrays(path, lambda a: a["head/1/bias"].__iadd__(1.0))
    with pytest.raises(spec_reader.SpecError, match="subnetwork digest fails"):
        spec_reader.verify_checkpoint(path.read_bytes())
    metadata = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert metadata["version"] == "3"


def test_the_record_digest_hashes_values_as_their_schema_types(tmp_path):
    """A float field written as the JSON number 1 is the float 1.0 to both readers (found by the
    fuzzer: the mutator's digest, written from the document, disagreed with wsn's)."""
    from tests.ckpt_tools import edit_meta
    from wsncli.engine.store.checkpoint import load_checkpoint

    path = tmp_path / "m.pt"
    learn(path, 1, epochs=1)

    def integers(meta):
        meta["tasks"][0]["capacity"] = 1
        meta["tasks"][0]["preprocess"]["scale"] = 16

    edit_meta(path, integers, restamp=True)  # restamped by tests/reliability/spec_reader.py
    assert load_checkpoint(path).damaged_records == []
    spec_reader.verify_checkpoint(path.read_bytes())


def test_the_record_digest_takes_absent_fields_at_their_defaults(tmp_path):
    """An absent `digest_version` is 3, an absent `accuracy_row` is [] (section 3), to both readers."""
    from tests.ckpt_tools import edit_meta
    from wsncli.engine.store.checkpoint import load_checkpoint

    path = tmp_path / "m.pt"
    learn(path, 1, epochs=1)

    def drop(meta):
        del meta["tasks"][0]["digest_version"], meta["tasks"][0]["accuracy_row"]

    edit_meta(path, drop)  # the record digest left as wsn wrote it: the defaults are what it hashed
    assert load_checkpoint(path).damaged_records == []
    spec_reader.verify_checkpoint(path.read_bytes())
