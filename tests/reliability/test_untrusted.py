"""Untrusted checkpoints: loading never runs code; corrupt or hostile files are one-line errors, fast."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.ckpt_tools import edit_arrays
from tests.reliability.conftest import assert_one_line_error, run_python, run_wsn
from tests.reliability.mutate_v2 import parse, serialize
from tests.reliability.payloads import dump_payload, golden_v1, load_payload, make_tiny_checkpoint, rewritten
from wsncli.errors import CheckpointError


class _Pwn:
    """Pickles to a call of os.system: any unpickler that runs code creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    """A version-2 checkpoint (split-digits, MLP 64-8, tasks 1 and 2)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt").read_bytes()


@pytest.fixture(scope="module")
def golden() -> bytes:
    """A version-1 checkpoint written by wsn 0.1.1 (MLP 64-20-20, tasks 2 then 1)."""
    return golden_v1()


def _evil_files(folder, marker):
    top = folder / "evil-top.pt"
    torch.save(_Pwn(marker), top)
    inner = folder / "evil-inner.pt"
    torch.save(
        {"format": "wsn-checkpoint", "version": 1, "meta": {"x": _Pwn(marker)}, "tensors": {}, "checksums": {}}, inner
    )
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
    runs = [
        (evil, args)
        for evil in evils
        for args in (
            ["eval", "--ckpt", evil],
            ["inspect", evil],
            ["train-task", "--task", "2", "--ckpt", evil, "--epochs", "1", "-q"],
        )
    ]
    with ThreadPoolExecutor(3) as pool:  # independent children, side by side
        results = list(pool.map(lambda run: run_wsn(run[1], tmp_path), runs))
    for (evil, args), result in zip(runs, results):
        assert result.returncode == 1, (args, result.stderr)
        assert_one_line_error(result.stderr, str(evil))
    assert not marker.exists(), "a command ran code from the checkpoint"
    assert all(evil.read_bytes() == data for evil, data in before.items())


def _corruptions(valid: bytes, version: int) -> dict[str, bytes]:
    rng = random.Random(5)
    flipped = bytearray(valid)
    if version == 1:
        flipped[len(valid) // 2] ^= 0x10  # inside a tensor record: its CRC no longer matches
    else:
        flipped[valid.index(b"accuracy") + 12] ^= 0x01  # a digit of the meta JSON: its checksum fails
    return {
        "truncated": valid[: len(valid) * 2 // 3],
        "bit-flipped": bytes(flipped),
        "random": bytes(rng.getrandbits(8) for _ in range(4096)),
        "random-after-zip-magic": b"PK\x03\x04" + bytes(rng.getrandbits(8) for _ in range(4096)),
        "random-after-safetensors-length": struct.pack("<Q", 4000)
        + b"{"
        + bytes(rng.getrandbits(8) for _ in range(4095)),
        "empty": b"",
    }


@pytest.mark.parametrize("command", ["eval", "inspect", "train-task"])
def test_corrupt_files_are_one_line_errors(tiny, golden, tmp_path, command):
    from wsncli.app import app

    for version, valid in ((1, golden), (2, tiny)):
        for kind, data in _corruptions(valid, version).items():
            path = tmp_path / f"v{version}-{kind}.pt"
            path.write_bytes(data)
            args = {
                "eval": ["eval", "--ckpt", path],
                "inspect": ["inspect", path],
                "train-task": ["train-task", "--task", "3", "--ckpt", path, "--epochs", "1", "-q"],
            }[command]
            result = CliRunner().invoke(app, [str(a) for a in args])
            assert result.exit_code == 1, (version, kind, result.output, result.exception)
            line = assert_one_line_error(result.stderr, str(path))
            assert any(
                w in line for w in ("corrupt", "not a wsn checkpoint", "empty", "unreadable", "truncated", "not valid")
            ), line
            assert path.read_bytes() == data
            assert (
                sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".pt")) == []
            )  # no lock, snapshot, temporary


def test_an_edited_weight_is_named_by_every_command(tiny, tmp_path):
    """A changed weight (checksums not recomputed) is not a refusal to read: inspect shows the file
    and warns naming the tensor, train-task refuses naming it, eval finds the changed subnetworks
    (exit 3)."""
    from wsncli.app import app

    path = tmp_path / "m.pt"
    path.write_bytes(tiny)
    edit_arrays(path, lambda a: a["layer/layers.0/weight"].__iadd__(1.0), recompute=False)
    data = path.read_bytes()
    runs = {
        "inspect": (["inspect", path], 0, "wsn: warning: 1 problem(s): layer/layers.0/weight"),
        "eval": (
            ["eval", "--ckpt", path],
            3,
            "wsn: error: forgetting detected: the subnetwork of task(s) 1, 2 changed",
        ),
        "train-task": (
            ["train-task", "--task", "3", "--ckpt", path, "--epochs", "1", "-q"],
            1,
            "tensor 'layer/layers.0/weight' fails its checksum (corrupt or edited outside wsn); refusing to train "
            "on it",
        ),
    }
    for command, (args, code, needle) in runs.items():
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (command, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], (command, result.stderr)
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


# ---- version 1: payloads of the golden file, rewritten with torch.save --------------------------------
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
    "format-name": (lambda p: p.__setitem__("format", "pytorch"), "not a wsn checkpoint (format 'pytorch')"),
    "version-2": (lambda p: p.__setitem__("version", 2), "checkpoint format version 2 is not supported"),
    "version-bool": (lambda p: p.__setitem__("version", True), "version True is not supported"),
    "version-tensor": (lambda p: p.__setitem__("version", torch.ones(3)), "not supported"),
    "no-checksums": (lambda p: p.pop("checksums"), "malformed checkpoint (meta or checksums missing)"),
    # meta structure
    "shared-list-bomb": (_set_meta("bomb", _bomb()), "shared or circular reference"),
    "circular-list": (_set_meta("loop", _loop()), "shared or circular reference"),
    "deep-nesting": (_set_meta("deep", _deep()), "nested more than 32 levels"),
    "tensor-in-meta": (_set_meta("x", torch.zeros(2)), "meta.x: Tensor is not plain data"),
    "huge-int": (_set_meta("seed", 10**40), "meta.seed: integer out of the 64-bit range"),
    "seed-float": (_set_meta("seed", 0.5), "metadata is invalid: Expected `int`, got `float` - at `$.seed`"),
    "benchmark-unknown": (_set_meta("benchmark", "imagenet"), "meta.benchmark must be one of"),
    "model-missing": (lambda p: p["meta"].pop("model"), "metadata is invalid: Object missing required field `model`"),
    "hidden-huge": (
        lambda p: p["meta"]["model"].__setitem__("hidden", [65536, 65536, 65536]),
        "layer tensors do not match meta.layers (extra [], missing ['layers.2'])",
    ),
    "input-shape-str": (lambda p: p["meta"]["model"].__setitem__("input_shape", ["64"]), "at `$.model.input_shape[0]`"),
    "tasks-dict": (_set_meta("tasks", {"1": {}}), "metadata is invalid: Expected `array`, got `object` - at `$.tasks`"),
    "task-str": (_set_record("task", "1"), "Expected `int`, got `str` - at `$.tasks[0].task`"),
    "task-twice": (lambda p: p["meta"]["tasks"][1].__setitem__("task", 2), "meta.tasks[1].task 2 is learned twice"),
    "order-wrong": (_set_record("order", 7), "meta.tasks[0].order is 7, expected 1"),
    "n-classes-absurd": (_set_record("n_classes", 10**12), "Expected `int` <= 100000 - at `$.tasks[0].n_classes`"),
    "n-classes-unbacked": (
        lambda p: p["meta"]["tasks"][0].update(n_classes=50000, classes=list(range(50000))),
        "tensor 'head/2/weight' is float32 (2, 20), expected float32 (50000, 20)",
    ),
    "n-classes-missing": (
        lambda p: p["meta"]["tasks"][0].pop("n_classes"),
        "Object missing required field `n_classes` - at `$.tasks[0]`",
    ),
    "accuracy-nan": (_set_record("accuracy", float("nan")), "Expected `float` >= 0.0 - at `$.tasks[0].accuracy`"),
    "capacity-inf": (_set_record("capacity", float("inf")), "Expected `float` <= 1.0 - at `$.tasks[0].capacity`"),
    "digest-not-hex": (_set_record("subnet_digest", "x" * 64), "at `$.tasks[0].subnet_digest`"),
    "method-mismatch": (
        _set_record("method", "finetune"),
        "meta.tasks[0].method 'finetune' differs from the checkpoint's 'wsn'",
    ),
    "record-list": (
        lambda p: p["meta"]["tasks"].__setitem__(0, [1, 2]),
        "Expected `object`, got `array` - at `$.tasks[0]`",
    ),
    # tensors
    "expanded-tensor": (
        _set_tensor("layer/layers.0/weight", lambda t: torch.zeros(1).expand(2**40)),
        "not a contiguous view",
    ),
    "strided-view": (_set_tensor("layer/layers.0/weight", lambda t: t.t()), "not a contiguous view"),
    "bfloat16": (_set_tensor("layer/layers.0/weight", lambda t: t.bfloat16()), "only dense CPU"),
    "float64": (_set_tensor("layer/layers.0/weight", lambda t: t.double()), "only dense CPU float32, int64 and uint8"),
    "sparse": (_set_tensor("layer/layers.0/weight", lambda t: t.to_sparse()), "sparse_coo"),
    "mask-wrong-shape": (
        _set_tensor("mask/1/layers.0", lambda t: t[:-1].clone()),
        "tensor 'mask/1/layers.0' is uint8 (159,), expected uint8 (160,)",
    ),
    "tensor-missing": (lambda p: p["tensors"].pop("head/2/bias"), "tensor 'head/2/bias' is missing"),
    "not-a-tensor": (_set_tensor("head/2/bias", lambda t: t.tolist()), "tensor 'head/2/bias' is a list, not a tensor"),
    "checksum-key-int": (lambda p: p["checksums"]["tensors"].__setitem__(7, "x"), "not string pairs"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_payloads_are_refused_by_name(golden, tmp_path, case):
    """Version-1 payloads (the golden file's, rewritten with checksums recomputed)."""
    change, message = HOSTILE[case]
    fix = case not in ("no-checksums",)
    try:
        data = rewritten(golden, change, fix=fix)
    except Exception as exc:  # noqa: BLE001 - torch cannot even write this one: nothing to test
        pytest.skip(f"torch.save refuses the payload: {exc}")
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path, data)
    text = str(info.value)
    assert str(tmp_path / "x.pt") in text and "\n" not in text
    assert message in text, text


# ---- version 2: safetensors files, rewritten part by part with checksums recomputed ---------------------
def _entry(name, key, value):
    def change(f):
        return {"entry_edits": [(next(i for i, t in enumerate(f.tensors) if t[0] == name), key, value)]}

    return change


def _meta(change):
    def apply(f):
        meta = json.loads(f.metadata["meta"])
        change(meta)
        f.metadata["meta"] = json.dumps(meta).replace('"@1e400@"', "1e400")  # a number json.dumps cannot write

    return apply


def _tensor(name, make):
    def apply(f):
        t = next(t for t in f.tensors if t[0] == name)
        t[1], t[2], t[3] = make(t[1], t[2], t[3])

    return apply


def _drop(name):
    return lambda f: f.tensors.remove(next(t for t in f.tensors if t[0] == name))


def _other_masks(dtype, shape, data):
    import formats

    layers = [formats.LayerMasks("layers.0", (8, 64), [np.ones(512, bool), np.zeros(512, bool)])]
    blob = formats.pack(layers, [2, 1], codec="packbits")
    return "U8", [len(blob)], blob


HOSTILE_V2 = {
    # header entries
    "dtype-list": (
        _entry("head/1/bias", "dtype", ["F32"]),
        "tensor 'head/1/bias': dtype \"['F32']\" is not one of F32, I64, I32, U8",
    ),
    "dtype-f16": (_entry("head/1/bias", "dtype", "F16"), "tensor 'head/1/bias': dtype 'F16' is not one of"),
    "dtype-int32-weight": (
        _entry("layer/layers.0/weight", "dtype", "I32"),
        "tensor 'layer/layers.0/weight' is int32 (8, 64), expected float32 (8, 64)",
    ),
    "shape-negative": (_entry("head/1/bias", "shape", [-2]), "shape must be a list of at most 8 non-negative integers"),
    "shape-float": (_entry("head/1/bias", "shape", [2.0]), "shape must be a list of at most 8 non-negative integers"),
    "shape-9-dims": (
        _entry("head/1/bias", "shape", [1] * 7 + [2, 1]),
        "shape must be a list of at most 8 non-negative integers",
    ),
    "shape-huge": (_entry("masks", "shape", [2**47]), "needs 140737488355328 bytes, its offsets span"),
    "shape-transposed": (
        _entry("layer/layers.0/weight", "shape", [64, 8]),
        "tensor 'layer/layers.0/weight' is float32 (64, 8), expected float32 (8, 64)",
    ),
    "offsets-reversed": (_entry("head/1/bias", "data_offsets", [8, 0]), "needs 8 bytes, its offsets span -8"),
    "offsets-overlap": (_entry("head/1/weight", "data_offsets", [0, 64]), "expected 8 (tensors must be back to back)"),
    "offsets-past-end": (_entry("pred/2", "data_offsets", [2**40, 2**40 + 72]), "data starts at byte 1099511627776"),
    "offsets-three": (
        _entry("head/1/bias", "data_offsets", [0, 8, 8]),
        "data_offsets must be two non-negative integers",
    ),
    "entry-extra-key": (_entry("head/1/bias", "offset", 0), "entry must have exactly dtype, shape and data_offsets"),
    "entry-not-object": (_entry("head/1/bias", None, [1, 2]), "entry must have exactly dtype, shape and data_offsets"),
    "header-duplicate-key": (
        lambda f: {"header_edit": lambda t: t.replace('{"', '{"masks": {}, "', 1)},
        "duplicate key 'masks'",
    ),
    "header-nan": (
        lambda f: {"header_edit": lambda t: t.replace('"shape": [', '"shape": [NaN, ', 1)},
        "NaN is not allowed",
    ),
    "header-1e400": (
        lambda f: {"header_edit": lambda t: t.replace('"shape": [', '"shape": [1e400, ', 1)},
        "number 1e400 is out of range",
    ),
    "header-deep": (
        lambda f: {"header_edit": lambda t: t.replace('"shape": [', '"shape": [' + "[" * 5000 + "]" * 5000 + ", ", 1)},
        "the safetensors header is not valid JSON",
    ),
    "header-lone-surrogate": (  # found by the fuzzer: a UnicodeEncodeError when the metadata was hashed
        lambda f: {"header_edit": lambda t: t.replace('"meta": "', '"meta": "\\ud800', 1)},
        "the metadata's 'meta' holds a lone surrogate (not valid Unicode)",
    ),
    "header-not-utf8": (
        lambda f: {"header_edit": lambda t: t.replace('"format"', '"\udcff"', 1)},
        "the safetensors header is not valid UTF-8",
    ),
    # __metadata__
    "metadata-unknown": (lambda f: f.metadata.__setitem__("signature", "x"), "unknown metadata signature"),
    "metadata-no-checksums": (lambda f: {"recompute": False, "drop_checksums": True}, "metadata lacks checksums"),
    "metadata-not-string": (lambda f: f.metadata.__setitem__("hmac", 7), "no wsn metadata in the safetensors header"),
    "checksums-list-a-ghost": (
        lambda f: {"extra_sum": "ghost"},
        "the checksum table does not list exactly the file's tensors",
    ),
    "snapshot-format": (
        lambda f: f.metadata.__setitem__("format", "wsn-snapshot"),
        "not a wsn checkpoint (format 'wsn-snapshot')",
    ),
    # the meta JSON, checksums recomputed
    "meta-duplicate-key": (
        lambda f: f.metadata.__setitem__("meta", f.metadata["meta"].replace('{"', '{"seed":7,"', 1)),
        "duplicate key 'seed'",
    ),
    "meta-1e400": (
        _meta(lambda m: m["tasks"][0].__setitem__("lr", "@1e400@")),
        "Number out of range - at `$.tasks[0].lr`",
    ),
    "meta-unknown-key": (
        _meta(lambda m: m.__setitem__("surprise", {"a": [1, 2]})),
        "Object contains unknown field `surprise`",
    ),
    "meta-nested-value": (
        _meta(lambda m: m["tasks"][0].__setitem__("classes", [[[0]], [[1]]])),
        "at `$.tasks[0].classes[0]`",
    ),
    "meta-long-string": (
        _meta(lambda m: m["tasks"][0].__setitem__("device", "x" * 5000)),
        "Expected `str` of length <= 256 - at `$.tasks[0].device`",
    ),
    "meta-huge-class": (
        _meta(lambda m: m["tasks"][0].__setitem__("classes", [0, 2**70])),
        "classes holds an integer out of the 64-bit range",
    ),
    "meta-layers-disagree": (
        _meta(lambda m: m["layers"][0].__setitem__("shape", [64, 8])),
        "tensor 'layer/layers.0/weight' is float32 (8, 64), expected float32 (64, 8)",
    ),
    "meta-network-disagrees": (
        _meta(lambda m: m["model"].__setitem__("hidden", [65536, 1024])),
        "meta.layers does not match the network meta.model describes",
    ),
    "meta-arch-needs-images": (  # found by the fuzzer: a DataError from building the net, not a CheckpointError
        _meta(lambda m: m["model"].__setitem__("arch", "lenet")),
        "malformed checkpoint: arch lenet needs image inputs (C, H, W), got shape (64,)",
    ),
    "meta-tasks-dropped": (
        _meta(lambda m: m.__setitem__("tasks", [])),
        "a masks tensor must be uint8 (bytes), and only where wsn tasks are learned",
    ),
    # tensors, checksums recomputed
    "masks-missing": (_drop("masks"), "the masks tensor is missing"),
    "masks-int32": (
        _tensor("masks", lambda dt, shape, data: ("I32", [len(data) // 4], data[: len(data) // 4 * 4])),
        "a masks tensor must be uint8",
    ),
    "masks-not-wsnm": (
        _tensor("masks", lambda dt, shape, data: (dt, shape, bytes(len(data)))),
        "the masks tensor is not a valid packed-mask file",
    ),
    "masks-other-tasks": (_tensor("masks", _other_masks), "the masks tensor holds tasks [2, 1], the records [1, 2]"),
    "head-missing": (_drop("head/2/weight"), "tensor 'head/2/weight' is missing"),
    "pred-beyond-classes": (
        _tensor("pred/1", lambda dt, shape, data: (dt, shape, b"\x07" + data[1:])),
        "recorded predictions of task 1 name a class beyond its 2",
    ),
    "std-zero": (
        _tensor("prep/1/std", lambda dt, shape, data: (dt, shape, bytes(4))),
        "task 1's transform has non-finite values or std <= 0",
    ),
    "weight-nan": (
        _tensor(
            "layer/layers.0/weight", lambda dt, shape, data: (dt, shape, np.full(512, np.nan, np.float32).tobytes())
        ),
        None,
    ),
}


def _v2_file(valid: bytes, case: str) -> bytes:
    change, _ = HOSTILE_V2[case]
    f = parse(valid)
    kwargs = change(f) or {}
    drop_checksums = kwargs.pop("drop_checksums", False)
    ghost = kwargs.pop("extra_sum", None)
    data = serialize(f, **kwargs)
    if drop_checksums or ghost:
        edited = parse(data)
        if drop_checksums:
            edited.metadata.pop("checksums")
        else:
            table = json.loads(edited.metadata["checksums"])
            edited.metadata["checksums"] = json.dumps({**table, ghost: "0" * 64})
        data = serialize(edited, recompute=False)
    return data


@pytest.mark.parametrize("case", list(HOSTILE_V2))
def test_hostile_v2_files_are_refused_by_name(tiny, tmp_path, case):
    data = _v2_file(tiny, case)
    message = HOSTILE_V2[case][1]
    if message is None:  # NaN weights load (the checksums are valid); eval then finds the changed subnetwork
        from wsncli.engine.usecases.evaluate import evaluate_checkpoint

        report = evaluate_checkpoint(_load(tmp_path, data), None, None, torch.device("cpu"))
        assert not report.forget_free and all(not t.subnet_match for t in report.tasks)
        return
    with pytest.raises(CheckpointError) as info:
        _load(tmp_path, data)
    text = str(info.value)
    assert text.startswith(str(tmp_path / "x.pt")) and "\n" not in text
    assert message in text, text


def test_a_small_file_declaring_a_large_network_is_refused_before_allocating(tiny, tmp_path):
    """A 9 KB file whose meta.model declares a 67M-weight network (meta.layers and the tensors
    unchanged) is refused on shapes alone: peak memory does not grow by the 540 MB it would take."""
    path = tmp_path / "big.pt"
    path.write_bytes(_v2_file(tiny, "meta-network-disagrees"))
    code = (
        "import resource, sys\n"
        "from wsncli.engine.store.checkpoint import load_checkpoint\n"
        "from wsncli.errors import CheckpointError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n    load_checkpoint({str(path)!r})\nexcept CheckpointError as exc:\n    print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    message, grown = result.stdout.strip().splitlines()
    assert "meta.layers does not match the network meta.model describes" in message
    assert int(grown) < 64, f"peak RSS grew by {grown} MiB"


# ---- size, bombs, special files ---------------------------------------------------------------------------
def test_size_limit_is_checked_before_reading(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", "1000")
    with pytest.raises(
        CheckpointError, match=rf"{len(tiny)} bytes is over the 1000-byte limit \(WSN_MAX_CHECKPOINT_BYTES\)"
    ):
        _load(tmp_path, tiny)
    monkeypatch.setenv("WSN_MAX_CHECKPOINT_BYTES", "lots")
    from wsncli.errors import UsageError

    with pytest.raises(UsageError, match="WSN_MAX_CHECKPOINT_BYTES must be a positive number"):
        _load(tmp_path, tiny)
    monkeypatch.delenv("WSN_MAX_CHECKPOINT_BYTES")
    from wsncli.engine.store.checkpoint import load_checkpoint

    sparse = tmp_path / "sparse.pt"  # 17 GiB of holes: reading it would take minutes and all memory
    sparse.write_bytes(tiny[:64])
    os.truncate(sparse, 17 << 30)
    with pytest.raises(CheckpointError, match=r"18253611008 bytes is over the 17179869184-byte limit"):
        load_checkpoint(sparse)


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
    """A named pipe would block open() for ever (no writer comes); a folder is not a file; a
    character device such as /dev/zero would never end."""
    from wsncli.engine.store.checkpoint import load_checkpoint

    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(20)
    try:
        with pytest.raises(CheckpointError, match="fifo.pt: is a FIFO, not a checkpoint"):
            load_checkpoint(fifo)
        with pytest.raises(CheckpointError, match="is a folder"):
            load_checkpoint(tmp_path)
        with pytest.raises(CheckpointError, match="/dev/zero: is a character device, not a checkpoint"):
            load_checkpoint(Path("/dev/zero"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_valid_payload_rewritten_loads(tiny, golden, tmp_path):
    """The rewriting helpers themselves keep a valid checkpoint valid (so refusals above are real)."""
    assert _load(tmp_path, rewritten(golden, lambda p: None)).learned() == [2, 1]
    assert _load(tmp_path, dump_payload(load_payload(golden))).learned() == [2, 1]
    again = _load(tmp_path, serialize(parse(tiny)))
    assert again.learned() == [1, 2] and again.tampered == [] and again.version == 3
