"""Untrusted checkpoints: loading never runs code; corrupt or hostile files are one-line errors, fast."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import torch
from typer.testing import CliRunner

from tests.reliability.conftest import assert_one_line_error, run_wsn
from tests.reliability.payloads import dump_payload, make_tiny_checkpoint, rewritten
from wsncli.errors import CheckpointError


class _Pwn:
    """Pickles to a call of os.system: any unpickler that runs code creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt").read_bytes()


def _evil_files(folder, marker):
    top = folder / "evil-top.pt"
    torch.save(_Pwn(marker), top)
    inner = folder / "evil-inner.pt"
    torch.save({"format": "wsn-checkpoint", "version": 1, "meta": {"x": _Pwn(marker)}, "tensors": {}, "checksums": {}}, inner)
    return top, inner


def test_malicious_pickle_is_armed(tmp_path):
    """The bait works: a loader that runs code (weights_only=False) does create the marker."""
    marker = tmp_path / "PWNED"
    top, _ = _evil_files(tmp_path, marker)
    torch.load(top, weights_only=False)
    assert marker.exists()


def test_malicious_pickle_runs_no_code(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    marker = tmp_path / "PWNED"
    evils = _evil_files(tmp_path, marker)
    before = {evil: evil.read_bytes() for evil in evils}
    runs = [(evil, args) for evil in evils
            for args in (["eval", "--ckpt", evil], ["inspect", evil], ["train-task", "--task", "2", "--ckpt", evil, "--epochs", "1", "-q"])]
    with ThreadPoolExecutor(3) as pool:  # independent children, side by side
        results = list(pool.map(lambda run: run_wsn(run[1], tmp_path), runs))
    for (evil, args), result in zip(runs, results):
        assert result.returncode == 1, (args, result.stderr)
        assert_one_line_error(result.stderr, str(evil))
    assert not marker.exists(), "a command ran code from the checkpoint"
    assert all(evil.read_bytes() == data for evil, data in before.items())


def _corruptions(valid: bytes) -> dict[str, bytes]:
    rng = random.Random(5)
    flipped = bytearray(valid)
    flipped[len(valid) // 2] ^= 0x10  # inside a tensor record: its CRC no longer matches
    return {
        "truncated": valid[: len(valid) * 2 // 3],
        "bit-flipped": bytes(flipped),
        "random": bytes(rng.getrandbits(8) for _ in range(4096)),
        "random-after-zip-magic": b"PK\x03\x04" + bytes(rng.getrandbits(8) for _ in range(4096)),
        "empty": b"",
    }


@pytest.mark.parametrize("command", ["eval", "inspect", "train-task"])
def test_corrupt_files_are_one_line_errors(tiny, tmp_path, command):
    from wsncli.app import app

    for kind, data in _corruptions(tiny).items():
        path = tmp_path / f"{kind}.pt"
        path.write_bytes(data)
        args = {"eval": ["eval", "--ckpt", path], "inspect": ["inspect", path],
                "train-task": ["train-task", "--task", "3", "--ckpt", path, "--epochs", "1", "-q"]}[command]
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 1, (kind, result.output, result.exception)
        line = assert_one_line_error(result.stderr, str(path))
        assert any(w in line for w in ("corrupt", "not a wsn checkpoint", "empty", "unreadable")), line
        assert path.read_bytes() == data


def _load(tmp_path, data: bytes, name="x.pt"):
    from wsncli.engine.store.checkpoint import load_checkpoint

    path = tmp_path / name
    path.write_bytes(data)
    start = time.monotonic()
    try:
        return load_checkpoint(path)
    finally:
        assert time.monotonic() - start < 10, "loading took too long"


def _set_meta(key, value):
    return lambda p: p["meta"].__setitem__(key, value)


def _set_record(key, value):
    return lambda p: p["meta"]["tasks"][0].__setitem__(key, value)


def _set_tensor(name, make):
    return lambda p: p["tensors"].__setitem__(name, make(p["tensors"][name]))


def _bomb(depth=25):
    node = []
    for _ in range(depth):
        node = [node, node]  # 2**25 leaves once expanded; a few hundred bytes pickled
    return node


def _loop():
    a = []
    a.append(a)
    return a


def _deep(depth=200):
    node = []
    for _ in range(depth):
        node = [node]
    return node


HOSTILE = {
    # envelope
    "format-name": (lambda p: p.__setitem__("format", "pytorch"), "not a wsn checkpoint"),
    "version-2": (lambda p: p.__setitem__("version", 2), "version 2 is not supported"),
    "version-bool": (lambda p: p.__setitem__("version", True), "version True is not supported"),
    "version-tensor": (lambda p: p.__setitem__("version", torch.ones(3)), "not supported"),
    "no-checksums": (lambda p: p.pop("checksums"), "checksum"),
    # meta structure
    "shared-list-bomb": (_set_meta("bomb", _bomb()), "shared or circular reference"),
    "circular-list": (_set_meta("loop", _loop()), "shared or circular reference"),
    "deep-nesting": (_set_meta("deep", _deep()), "nested more than"),
    "tensor-in-meta": (_set_meta("x", torch.zeros(2)), "Tensor is not plain data"),
    "huge-int": (_set_meta("seed", 10**40), "64-bit range"),
    "seed-float": (_set_meta("seed", 0.5), "meta.seed must be an integer"),
    "benchmark-unknown": (_set_meta("benchmark", "imagenet"), "meta.benchmark must be one of"),
    "model-missing": (lambda p: p["meta"].pop("model"), "meta.model must be a dict"),
    "hidden-huge": (lambda p: p["meta"]["model"].__setitem__("hidden", [65536, 65536, 65536]), "expected torch.float32 (65536, 64)"),
    "input-shape-str": (lambda p: p["meta"]["model"].__setitem__("input_shape", ["64"]), "input_shape"),
    "tasks-dict": (_set_meta("tasks", {"1": {}}), "meta.tasks must be a list"),
    "task-str": (_set_record("task", "1"), "meta.tasks[0].task must be an integer"),
    "task-twice": (lambda p: p["meta"]["tasks"][1].__setitem__("task", 1), "learned twice"),
    "order-wrong": (_set_record("order", 7), "order"),
    "n-classes-absurd": (_set_record("n_classes", 10**12), "n_classes must be an integer in [1, 100000]"),
    "n-classes-unbacked": (lambda p: p["meta"]["tasks"][0].update(n_classes=50000, classes=list(range(50000))), "expected torch.float32 (50000, 8)"),
    "n-classes-missing": (lambda p: p["meta"]["tasks"][0].pop("n_classes"), "n_classes is missing"),
    "accuracy-nan": (_set_record("accuracy", float("nan")), "accuracy must be a finite number"),
    "capacity-inf": (_set_record("capacity", float("inf")), "capacity must be a finite number"),
    "digest-not-hex": (_set_record("subnet_digest", "x" * 64), "sha256 hex digest"),
    "method-mismatch": (_set_record("method", "finetune"), "method must be one of wsn"),
    "record-list": (lambda p: p["meta"]["tasks"].__setitem__(0, [1, 2]), "meta.tasks[0] must be a dict"),
    # tensors
    "expanded-tensor": (_set_tensor("layer/layers.0/weight", lambda t: torch.zeros(1).expand(2**40)), "not a contiguous view"),
    "strided-view": (_set_tensor("layer/layers.0/weight", lambda t: t.t()), "not a contiguous view"),
    "bfloat16": (_set_tensor("layer/layers.0/weight", lambda t: t.bfloat16()), "only dense CPU"),
    "float64": (_set_tensor("layer/layers.0/weight", lambda t: t.double()), "only dense CPU float32, int64 and uint8"),
    "sparse": (_set_tensor("layer/layers.0/weight", lambda t: t.to_sparse()), "sparse_coo"),
    "mask-wrong-shape": (_set_tensor("mask/1/layers.0", lambda t: t[:-1].clone()), "mask/1/layers.0"),
    "tensor-missing": (lambda p: p["tensors"].pop("head/2/bias"), "head/2/bias"),
    "not-a-tensor": (_set_tensor("head/2/bias", lambda t: t.tolist()), "not a tensor"),
    "checksum-key-int": (lambda p: p["checksums"]["tensors"].__setitem__(7, "x"), "not a string pair"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_payloads_are_refused_by_name(tiny, tmp_path, case):
    change, message = HOSTILE[case]
    fix = case not in ("no-checksums",)
    try:
        data = rewritten(tiny, change, fix=fix)
    except Exception as exc:  # noqa: BLE001 - torch cannot even write this one: nothing to test
        pytest.skip(f"torch.save refuses the payload: {exc}")
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path, data)
    text = str(info.value)
    assert str(tmp_path / "x.pt") in text and "\n" not in text
    assert message in text, text


def test_size_limit_is_checked_before_reading(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", "1000")
    with pytest.raises(CheckpointError, match=r"over the 1000-byte checkpoint limit"):
        _load(tmp_path, tiny)
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", "lots")
    from wsncli.errors import UsageError

    with pytest.raises(UsageError, match="WSN_MAX_CHECKPOINT_BYTES must be a positive number"):
        _load(tmp_path, tiny)


def test_zip_bomb_is_refused_before_inflating(tmp_path):
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB of zeros, ~64 KiB deflated
    with pytest.raises(CheckpointError, match="compressed ZIP entries|ZIP entries declare"):
        _load(tmp_path, buffer.getvalue())


class _Hung(Exception):
    pass


def _hang(signum, frame):
    raise _Hung("load_checkpoint hung")


def test_fifo_and_folder_do_not_hang(tmp_path):
    """A named pipe would block open() for ever (no writer comes); a folder is not a file."""
    from wsncli.engine.store.checkpoint import load_checkpoint

    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(20)
    try:
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_checkpoint(fifo)
        with pytest.raises(CheckpointError, match="is a folder"):
            load_checkpoint(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_valid_payload_rewritten_loads(tiny, tmp_path):
    """The rewriting helpers themselves keep a valid checkpoint valid (so refusals above are real)."""
    assert _load(tmp_path, rewritten(tiny, lambda p: None)).learned() == [1, 2]
    assert _load(tmp_path, dump_payload(__import__("tests.reliability.payloads", fromlist=["x"]).load_payload(tiny))).learned() == [1, 2]
