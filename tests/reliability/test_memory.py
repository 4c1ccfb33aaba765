"""Memory is bounded by what the format declares: the header length and the header are read and checked
first (metadata, layers, the masks' size against what the metadata allows), and the tensors are read
once, into one buffer of their declared size. Measured in a fresh process, its peak resident memory
reset after the imports (/proc/self/clear_refs), so torch's own start-up is not counted."""

from __future__ import annotations

import json
import os
import struct

import pytest

from tests.reliability.conftest import run_python
from tests.reliability.trust_tools import learn, peak_script, untrained_checkpoint_script

GIB = 1 << 30
MIB = 1 << 20


def _measure(path, cwd, whats=("read", "load")) -> dict:
    """{"read_message", "read_growth", "load_message", "load_growth"}, each measured in its own process."""
    out = {}
    for what in whats:
        result = run_python(peak_script(path, what), cwd)
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout.strip().splitlines()[-1])
        out[f"{what}_message"], out[f"{what}_growth"] = got["message"], got["growth"]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("tiny") / "t.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSN_CHECKPOINT_KEY", raising=False)
        for task in (1, 2):
            learn(path, task, epochs=1)
    return path.read_bytes()


def test_a_sparse_1_gib_file_is_refused_in_little_memory(tiny, tmp_path):
    """A checkpoint followed by 1 GiB of holes (no disk used): refused on its header, before the
    data is read. wsn 0.2.0 read it whole, twice: 2.1 GB."""
    path = tmp_path / "sparse.pt"
    path.write_bytes(tiny)
    os.truncate(path, GIB)
    got = _measure(path, tmp_path)
    for name in ("read", "load"):
        assert "the tensors describe" in got[f"{name}_message"], got
        assert got[f"{name}_growth"] < 100 * MIB, got


def test_a_header_declaring_1_gib_of_masks_is_refused_before_reading(tiny, tmp_path):
    """A consistent header (offsets covering the file exactly) whose masks tensor is larger than a
    packed-mask file of the layers and tasks its metadata declares can be."""
    (n,) = struct.unpack_from("<Q", tiny)
    header = json.loads(tiny[8 : 8 + n])
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    end, layout = 0, {}
    for name in sorted(entries, key=lambda k: entries[k]["data_offsets"][0]):
        size = entries[name]["data_offsets"][1] - entries[name]["data_offsets"][0]
        if name == "masks":
            size = GIB
            entries[name]["shape"] = [size]
        layout[name] = {**entries[name], "data_offsets": [end, end + size]}
        end += size
    text = json.dumps({"__metadata__": header["__metadata__"], **layout}).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "masks.pt"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    os.truncate(path, 8 + len(text) + end)
    got = _measure(path, tmp_path)
    for name in ("read", "load"):
        assert "the masks tensor has 1073741824 bytes, more than the" in got[f"{name}_message"], got
        assert got[f"{name}_growth"] < 100 * MIB, got


def test_a_valid_file_costs_its_size_and_a_small_constant(tmp_path):
    """A 33 MB checkpoint (an MLP 64-2000-2000 with no task yet) is read with one buffer: peak growth
    at most its size plus 16 MiB. wsn 0.2.0 held it two to three times over."""
    code = untrained_checkpoint_script(tmp_path / "big.pt", (2000, 2000))
    made = run_python(code, tmp_path)
    assert made.returncode == 0, made.stderr
    size = (tmp_path / "big.pt").stat().st_size
    assert size > 30 * MIB
    got = _measure(tmp_path / "big.pt", tmp_path, ("read",))
    assert got["read_message"] is None, got
    assert got["read_growth"] <= size + 16 * MIB, (size, got)


def test_a_sparse_snapshot_is_refused_in_little_memory(tiny, tmp_path):
    """The snapshot gets the checkpoint's limits: a 1 GiB sparse `.resume` is refused on its header."""
    from tests.reliability.trust_tools import interrupted

    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(tiny)
    snap = interrupted(ckpt, 3, stop_after=1, epochs=3)
    os.truncate(snap, GIB)
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from wsncli.app import main\n"
        "def peak():\n"
        "    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "import wsncli.engine.usecases.learn, torch\n"
        "try:\n    open('/proc/self/clear_refs', 'w').write('5')\nexcept OSError:\n    pass\n"
        "before = peak()\n"
        "sys.argv = ['wsn', 'train-task', '--task', '3', '--epochs', '3', '--hidden', '16', '--device', 'cpu',\n"
        f"            '-q', '--ckpt', {str(ckpt)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps({'code': code, 'growth': peak() - before}))\n"
    )
    result = run_python(code, tmp_path)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["code"] == 1 and "m.pt.resume" in result.stderr and "--restart" in result.stderr, result.stderr
    assert got["growth"] < 100 * MIB, got
