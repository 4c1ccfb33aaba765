"""Same command, same seed, on CPU: bit-identical tensors (the checkpoints' tensor checksums agree)."""

from __future__ import annotations

import numpy as np

from tests.ckpt_tools import read_parts
from tests.reliability.conftest import popen_wsn, tensor_sums, train_args


def _chain(folder, seed: int):
    """task 1 then task 2 into folder/m.pt, as a shell would run them; returns the Popen of task 1."""
    folder.mkdir()
    return popen_wsn(train_args(folder / "m.pt", 1, 2, "--seed", seed, "--device", "cpu"), folder)


def _finish(proc, folder, then_task2: bool):
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    if then_task2:
        return popen_wsn(train_args(folder / "m.pt", 2, 2, "--device", "cpu"), folder)
    return None


def test_same_seed_gives_bit_identical_tensors(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    first = {a: _chain(a, 7), b: _chain(b, 7)}
    second = {folder: _finish(proc, folder, True) for folder, proc in first.items()}
    other = _chain(c, 8)  # a different seed, for contrast
    for folder, proc in second.items():
        _finish(proc, folder, False)
    _finish(other, c, False)
    sums_a, sums_b = tensor_sums(a / "m.pt"), tensor_sums(b / "m.pt")
    assert {"masks", "head/2/weight", "pred/2"} <= set(sums_a)
    assert sums_a == sums_b
    # digests are over the bytes; check the tensors themselves too
    ta, tb = read_parts(a / "m.pt")[1], read_parts(b / "m.pt")[1]
    assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) and ta[k].dtype == tb[k].dtype for k in ta)
    # and the comparison can fail: another seed gives other weights
    sums_c = tensor_sums(c / "m.pt")
    assert sums_c["layer/layers.0/weight"] != sums_a["layer/layers.0/weight"]
