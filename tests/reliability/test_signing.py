"""The signing rule (docs/CHECKPOINT.md section 5): with WSN_CHECKPOINT_KEY set, every command refuses
a checkpoint whose signature is missing or fails, train-task included; the only way in is
`train-task --adopt-unsigned`, which re-verifies every task against its recorded data and says so.
A signature cannot be laundered: stripped, edited, re-signed with a guessed key, key removed, key
changed."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import pytest

from tests.ckpt_tools import edit_meta, read_parts, write_parts
from tests.cli.helpers import assert_error, wsn
from tests.reliability.spec_reader import auth_message
from tests.reliability.trust_tools import HIDDEN, learn

KEY = "s3cret"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "checkpoints"
TRAIN3 = ("train-task", "--task", 3, "--epochs", 1, "--hidden", HIDDEN[0], "--device", "cpu", "-q")


@pytest.fixture(scope="module")
def signed_master(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed")
    path = folder / "m.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSN_CHECKPOINT_KEY", KEY)
        for task in (1, 2):
            learn(path, task, epochs=1)
    return path


@pytest.fixture
def signed(signed_master, tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", KEY)
    path = tmp_path / "m.pt"
    shutil.copyfile(signed_master, path)
    return path


def _strip(path: Path) -> None:
    metadata, arrays = read_parts(path)
    metadata.pop("hmac")
    write_parts(path, metadata, arrays, recompute=False)


def _resign(path: Path, key: bytes) -> None:
    """What an editor who guesses a key does: recompute the HMAC over the section-5 message."""
    metadata, arrays = read_parts(path)
    fields = {k: metadata[k] for k in ("checksums", "meta", "meta_sha256")}
    message = auth_message(metadata["format"], int(metadata["version"]), fields)
    metadata["hmac"] = hmac.new(key, message, hashlib.sha256).hexdigest()
    write_parts(path, metadata, arrays, recompute=False)


def _remove_task_2(meta: dict) -> None:
    meta["tasks"].pop()


def _launder(path: Path, change) -> None:
    """The issue's laundering: strip the signature, edit without the key (checksums recomputed)."""
    _strip(path)
    edit_meta(path, change)


READERS = {
    "eval": lambda p: ("eval", "--ckpt", p),
    "inspect": lambda p: ("inspect", p),
    "predict": lambda p: ("predict", p.parent / "x.npy", "--ckpt", p, "--task", 1),
    "train-task": lambda p: (*TRAIN3, "--ckpt", p),
    "export": lambda p: ("export", "--ckpt", p, "--task", 1, "-o", p.parent / "t1.safetensors"),
    "pack-masks": lambda p: ("pack-masks", "--ckpt", p, "-o", p.parent / "m.wsnm"),
    "report": lambda p: ("report", "--ckpt", p, "-o", p.parent / "report", "-q"),
}


@pytest.mark.parametrize("command", list(READERS))
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("stripped", "is not signed, but WSN_CHECKPOINT_KEY is set"),
        ("stripped-then-task-removed", "is not signed, but WSN_CHECKPOINT_KEY is set"),
        ("stripped-then-classes-changed", "is not signed, but WSN_CHECKPOINT_KEY is set"),
        ("edited-signature-kept", "fails its HMAC signature"),
        ("resigned-with-a-guessed-key", "fails its HMAC signature"),
    ],
)
def test_every_command_refuses_what_the_key_does_not_vouch_for(signed, command, damage, message):
    import numpy as np

    np.save(signed.parent / "x.npy", np.zeros((1, 64), np.float32))
    if damage == "stripped":
        _strip(signed)
    elif damage == "stripped-then-task-removed":
        _launder(signed, _remove_task_2)
    elif damage == "stripped-then-classes-changed":
        _launder(signed, lambda m: m["tasks"][0].__setitem__("classes", [0, 7]))
    elif damage == "edited-signature-kept":
        edit_meta(signed, lambda m: m["tasks"][0].__setitem__("classes", [0, 7]))
    else:
        _launder(signed, _remove_task_2)
        _resign(signed, b"password")
    before = signed.read_bytes()
    line = assert_error(wsn(*READERS[command](signed)), 1, str(signed), message)
    assert "--adopt-unsigned" in line
    assert signed.read_bytes() == before


def _consistent(path: Path, change_meta=None, change_arrays=None) -> None:
    """An edit by someone who knows every rule but not the key: the signature stripped, the change
    made, then the subnetwork and record digests recomputed as section 6 defines them."""
    import numpy as np

    from tests.reliability import spec_reader

    metadata, arrays = read_parts(path)
    metadata.pop("hmac")
    arrays = {k: np.array(v) for k, v in arrays.items()}
    meta = json.loads(metadata["meta"])
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    for record in meta["tasks"]:
        record["subnet_digest"] = spec_reader.subnet_digest_v3(meta, arrays, record["task"], _masks(arrays, record))
        record["record_digest"] = spec_reader.record_digest(meta, record)
    metadata["meta"] = json.dumps(meta)
    write_parts(path, metadata, arrays)


def _masks(arrays, record):
    import numpy as np

    import formats

    packed = formats.unpack(arrays["masks"].tobytes())
    i = packed.task_ids.index(record["task"])
    return {l.name: np.asarray(l.masks[i], bool) for l in packed.layers}


def test_adopting_a_laundered_checkpoint_is_refused(signed):
    """--adopt-unsigned re-verifies every task against its data: a removed task leaves its masks
    behind, an edited record fails its record digest, and a rewrite consistent in every digest still
    measures other test labels or other predictions than recorded. Nothing is written."""
    import numpy as np

    def bias(arrays):
        rarest = int(np.bincount(arrays["pred/1"], minlength=2).argmin())
        arrays["head/1/bias"][rarest] += 100.0  # every prediction becomes the class least predicted

    changes = [
        (lambda p: _launder(p, _remove_task_2), "the masks tensor is not a valid packed-mask file for these 1 task"),
        (
            lambda p: _launder(p, lambda m: m["tasks"][0].__setitem__("classes", [0, 7])),
            "task 1: its record fails its record digest",
        ),
        (
            lambda p: _consistent(p, lambda m: m["tasks"][0].__setitem__("classes", [0, 7])),
            "cannot adopt this unsigned checkpoint: task 1 re-verifies as data-changed",
        ),
        (lambda p: _consistent(p, change_arrays=bias), "task 1 re-verifies as outputs-differ"),
    ]
    for change, message in changes:
        path = signed.parent / "laundered.pt"
        shutil.copyfile(signed, path)
        change(path)
        before = path.read_bytes()
        assert_error(wsn(*TRAIN3, "--ckpt", path, "--adopt-unsigned"), 1, str(path), message)
        assert path.read_bytes() == before and not path.with_name(path.name + ".resume").exists()


def test_adopting_an_unsigned_checkpoint_re_verifies_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    path = tmp_path / "m.pt"
    learn(path, 1, epochs=1)
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", KEY)
    assert_error(wsn(*TRAIN3, "--ckpt", path), 1, "is not signed", "--adopt-unsigned")
    result = wsn(*TRAIN3, "--ckpt", path, "--adopt-unsigned", "--json")
    assert result.exit_code == 0, result.stderr
    assert "wsn: warning: adopted the unsigned checkpoint" in result.stderr and "task(s) 1 proven" in result.stderr
    assert any("re-verified every task" in w for w in json.loads(result.stdout)["warnings"])
    from wsncli.engine.store.checkpoint import load_checkpoint

    assert load_checkpoint(path).signature == "verified" and load_checkpoint(path).learned() == [1, 3]


def test_a_changed_key_needs_adoption(signed, monkeypatch):
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "new-key")
    assert_error(wsn("eval", "--ckpt", signed), 1, "fails its HMAC signature")
    result = wsn(*TRAIN3, "--ckpt", signed, "--adopt-unsigned")
    assert result.exit_code == 0, result.stderr
    assert "adopted the wrongly signed checkpoint" in result.stderr
    assert json.loads(wsn("eval", "--ckpt", signed, "--json").stdout)["signature"] == "verified"


def test_a_removed_key_is_not_a_verified_signature(signed, monkeypatch):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY")
    assert json.loads(wsn("eval", "--ckpt", signed, "--json").stdout)["signature"] == "unverified"
    assert_error(wsn(*TRAIN3, "--ckpt", signed), 1, "the checkpoint is signed; set WSN_CHECKPOINT_KEY")
    assert_error(wsn(*TRAIN3, "--ckpt", signed, "--adopt-unsigned"), 2, "--adopt-unsigned needs WSN_CHECKPOINT_KEY")


def test_a_version_1_file_is_never_signed_so_a_key_refuses_it_until_adopted(tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", KEY)
    path = tmp_path / "old.pt"
    shutil.copyfile(GOLDEN / "v1-digits-wsn.pt", path)
    assert_error(wsn("eval", "--ckpt", path), 1, "version-1 checkpoint, never signed", "--adopt-unsigned")
    result = wsn("train-task", "--task", 3, "--epochs", 1, "--device", "cpu", "-q", "--ckpt", path, "--adopt-unsigned")
    assert result.exit_code == 0, result.stderr
    assert "task(s) 2, 1 proven" in result.stderr
    assert json.loads(wsn("eval", "--ckpt", path, "--json").stdout)["signature"] == "verified"
