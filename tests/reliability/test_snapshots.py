"""`.resume` snapshots are checksummed whole (state included), signed like checkpoints, read with the
checkpoint's limits; every damaged one is one line naming it and `--restart`, never a traceback and
never a silently wrong resume. Snapshots are made in-process: a run stopped after epoch 2 of 4."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.ckpt_tools import read_parts
from tests.cli.helpers import assert_error, wsn
from tests.reliability.trust_tools import HIDDEN, copy_pair, interrupted, learn, rewrite_snapshot

ARGS = ("train-task", "--task", 2, "--epochs", 4, "--hidden", HIDDEN[0], "--device", "cpu", "-q")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(checkpoint with task 1, the snapshot of task 2 stopped after epoch 2)."""
    folder = tmp_path_factory.mktemp("snap")
    ckpt = folder / "m.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSN_CHECKPOINT_KEY", raising=False)
        learn(ckpt, 1, epochs=1)
        snap = interrupted(ckpt, 2, stop_after=2)
    return ckpt, snap


def _flip_state_digit(snap):
    """One bit of the state's text: `"epoch": 2` becomes `"epoch": 3` (valid JSON, another value)."""
    raw = bytearray(snap.read_bytes())
    at = raw.index(b'\\"epoch\\": 2') + len(b'\\"epoch\\": ')
    raw[at] ^= 0x01
    snap.write_bytes(bytes(raw))


def _first(prefix):
    return lambda a: next(k for k in sorted(a) if k.startswith(prefix))


DAMAGE = {
    "state-bit-flipped": _flip_state_digit,
    "state-epoch-edited": lambda s: rewrite_snapshot(s, state=lambda st: st.__setitem__("epoch", 30)),
    "state-not-json": lambda s: rewrite_snapshot(s, state=lambda st: '{"epoch": 2,'),
    "state-epoch-a-string": lambda s: rewrite_snapshot(s, state=lambda st: st.__setitem__("epoch", "2")),
    "best-loss-a-huge-integer": lambda s: rewrite_snapshot(s, state=lambda st: st.__setitem__("best_loss", 2**64)),
    "history-loss-a-string": lambda s: rewrite_snapshot(
        s, state=lambda st: st["history"][0].__setitem__("train_loss", "0.5")
    ),
    "history-unknown-field": lambda s: rewrite_snapshot(s, state=lambda st: st["history"][0].__setitem__("lr", 1)),
    "identity-not-json": lambda s: rewrite_snapshot(s, identity=lambda i: "[1, 2"),
    "rng-tensor-missing": lambda s: rewrite_snapshot(s, arrays=lambda a: a.pop("rng/generator")),
    "rng-state-cut": lambda s: rewrite_snapshot(s, arrays=lambda a: a.__setitem__("rng/torch", a["rng/torch"][:100])),
    "model-tensor-reshaped": lambda s: rewrite_snapshot(
        s, arrays=lambda a: a.__setitem__(_first("model/")(a), a[_first("model/")(a)].reshape(-1)[:-1].copy())
    ),
    "optimizer-index-not-a-number": lambda s: rewrite_snapshot(
        s, arrays=lambda a: a.__setitem__("opt/x/exp_avg", a.pop(_first("opt/")(a)))
    ),
    "frozen-weight-changed": lambda s: rewrite_snapshot(  # every weight: some of them task 1 uses
        s, arrays=lambda a: a["model/layers.0.weight"].__iadd__(1.0)
    ),
    "frozen-weight-moved-by-adam": lambda s: rewrite_snapshot(  # the moments would move task 1's weights
        s, arrays=lambda a: a["opt/0/exp_avg"].__iadd__(1.0)
    ),
    "tensor-added": lambda s: rewrite_snapshot(s, arrays=lambda a: a.__setitem__("junk", np.zeros(3, np.float32))),
    "truncated": lambda s: s.write_bytes(s.read_bytes()[: len(s.read_bytes()) * 2 // 3]),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_snapshot_is_one_line_naming_it_and_restart(pair, tmp_path, monkeypatch, kind):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt, snap = copy_pair(*pair, tmp_path)
    before = ckpt.read_bytes()
    DAMAGE[kind](snap)
    damaged = snap.read_bytes()
    assert_error(wsn(*ARGS, "--ckpt", ckpt), 1, str(snap), "--restart")
    assert ckpt.read_bytes() == before and snap.read_bytes() == damaged  # nothing used, nothing lost
    result = wsn(*ARGS, "--ckpt", ckpt, "--restart")
    assert result.exit_code == 0, result.stderr
    assert not snap.exists()


def test_the_undamaged_snapshot_resumes(pair, tmp_path, monkeypatch):
    """The fixture's snapshot is sound (so the refusals above are the damage's doing)."""
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt, snap = copy_pair(*pair, tmp_path)
    result = wsn(*ARGS[:-1], "--ckpt", ckpt)
    assert result.exit_code == 0, result.stderr
    assert "resumed after epoch 2" in result.stdout and not snap.exists()


def test_the_state_is_covered_by_the_checksum(pair, tmp_path, monkeypatch):
    """An edit of the state alone, the tensor checksums left valid: refused as corrupt."""
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt, snap = copy_pair(*pair, tmp_path)
    rewrite_snapshot(snap, state=lambda st: st.__setitem__("best_epoch", 1), recompute=False)
    assert_error(wsn(*ARGS, "--ckpt", ckpt), 1, str(snap), "fails its checksum", "--restart")


def test_snapshots_are_read_within_the_checkpoint_limit(pair, tmp_path, monkeypatch):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt, snap = copy_pair(*pair, tmp_path)
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", str(snap.stat().st_size - 1))
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", str(max(ckpt.stat().st_size, snap.stat().st_size - 1)))
    assert_error(wsn(*ARGS, "--ckpt", ckpt), 1, str(snap), "over the", "WSN_MAX_CHECKPOINT_BYTES", "--restart")


def test_a_killed_snapshot_writer_leaves_no_temporary_file(pair, tmp_path, monkeypatch):
    """`.<ckpt>.resume.tmp-<pid>` of a writer killed mid-write is removed by the next train-task."""
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt, snap = copy_pair(*pair, tmp_path)
    stale = tmp_path / f".{snap.name}.tmp-999999"
    stale.write_bytes(snap.read_bytes()[:100])
    result = wsn(*ARGS, "--ckpt", ckpt)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_snapshot_format_is_version_2_and_whole(pair):
    md, arrays = read_parts(pair[1])
    assert md["format"] == "wsn-snapshot" and md["version"] == "2" and "sha256" in md and "hmac" not in md
    assert any(a.ndim == 0 for a in arrays.values())  # Adam's step counts: 0-d, hashed with shape []


# ---- signed tasks resume ---------------------------------------------------------------------------------


def test_a_snapshot_of_a_signed_task_is_signed_and_resumes_bit_identical(tmp_path, monkeypatch):
    from wsncli.engine.store.checkpoint import checkpoint_arrays, load_checkpoint

    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "k1")
    whole, killed = tmp_path / "whole.pt", tmp_path / "killed.pt"
    for path in (whole, killed):
        learn(path, 1, epochs=1)
    learn(whole, 2)
    snap = interrupted(killed, 2, stop_after=2)
    md, _ = read_parts(snap)
    assert "hmac" in md
    result = learn(killed, 2)
    assert result.resumed_from_epoch == 2 and not snap.exists()
    a, b = checkpoint_arrays(load_checkpoint(whole)), checkpoint_arrays(load_checkpoint(killed))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert load_checkpoint(killed).signature == "verified"


def _key(monkeypatch, key):
    if key is None:
        monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    else:
        monkeypatch.setenv("WSN_CHECKPOINT_KEY", key)


KEYS = {  # (key when written, key when resumed, what the refusal says)
    "unsigned-under-a-key": (None, "k1", "is not signed, but WSN_CHECKPOINT_KEY is set"),
    "other-key": ("k1", "k2", "fails its HMAC signature"),
    "key-removed": ("k1", None, "the snapshot is signed; set WSN_CHECKPOINT_KEY"),
    "hmac-stripped": ("k1", "k1", "is not signed, but WSN_CHECKPOINT_KEY is set"),
}


@pytest.mark.parametrize("case", list(KEYS))
def test_a_snapshot_whose_signature_does_not_hold_is_refused(tmp_path, monkeypatch, case):
    """Written unsigned then resumed with a key; written with one key, resumed with another; written
    signed, resumed without the key; its hmac stripped (checksums valid): one line, --restart."""
    write_key, read_key, message = KEYS[case]
    _key(monkeypatch, write_key)
    snap = interrupted(tmp_path / "m.pt", 1, stop_after=2)
    if case == "hmac-stripped":
        rewrite_snapshot(snap, drop_hmac=True)
    _key(monkeypatch, read_key)
    assert_error(wsn(*ARGS[:2], 1, *ARGS[3:], "--ckpt", tmp_path / "m.pt"), 1, str(snap), message, "--restart")
    assert os.path.exists(snap)
