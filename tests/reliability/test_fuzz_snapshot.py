"""Fuzzing `.resume` snapshots: a task resumes from a mutant, or `train-task` refuses it with one line
naming it and `--restart`; never a traceback, never a hang. Mutants change the state (epoch, best
epoch, history), the identity, the metadata, the tensors and their entries, with checksums recomputed
(tests/reliability/mutate_snapshot.py)."""

from __future__ import annotations

import collections
import random
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.mutate_snapshot import exercise_snapshot, mutate_snapshot
from tests.reliability.trust_tools import interrupted, learn, request

HANG_SECONDS = 20
_VALID: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _valid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-snap")
    ckpt = folder / "m.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSN_CHECKPOINT_KEY", raising=False)
        learn(ckpt, 1, epochs=1)
        snap = interrupted(ckpt, 2, stop_after=2)
    _VALID.update(ckpt=ckpt, snap=snap, ckpt_bytes=ckpt.read_bytes(), snap_bytes=snap.read_bytes())
    yield
    _VALID.clear()


def _hang(signum, frame):
    raise AssertionError(f"resuming took more than {HANG_SECONDS} s")


def _check(rnd: random.Random) -> str:
    kind, mutant = mutate_snapshot(_VALID["snap_bytes"], rnd)
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HANG_SECONDS)
    try:
        outcome, message = exercise_snapshot(
            _VALID["ckpt"], _VALID["snap"], _VALID["ckpt_bytes"], mutant, request(_VALID["ckpt"], 2)
        )
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert outcome in ("resumed", "refused", "restarted", "diverged"), (kind, outcome, message)
    return outcome


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_snapshot_structure_with_checksums_recomputed(seed, monkeypatch):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    _check(random.Random(seed))


def test_the_snapshot_mutator_reaches_past_the_checksums(monkeypatch):
    """Most mutants are refused by the checks behind the checksums, some still resume (what a
    recomputed checksum cannot tell from a real run), and every kind of change is made."""
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    rnd = random.Random(7)
    outcomes = collections.Counter(_check(rnd) for _ in range(40))
    assert outcomes["refused"] >= 20 and outcomes["resumed"] >= 1, outcomes
    kinds = set()
    for _ in range(200):
        kinds.update(mutate_snapshot(_VALID["snap_bytes"], rnd)[0].split("+"))
    assert kinds == {"bytes", "state", "identity", "metadata", "tensors", "entry"}


@pytest.mark.parametrize(
    ("target", "extra"),
    [
        ("snapshot", ["--iterations", "5", "--structure-iterations", "15"]),
        ("memory", ["--sizes", "", "--sparse", "1"]),
    ],
)
def test_the_long_fuzzer_runs_snapshots_and_measures_memory(tmp_path, target, extra):
    """benchmarks/fuzz_loaders.py --target snapshot ends with one JSON line counting the outcomes;
    --target memory with one JSON line of peak growth per file (a sparse 1 GiB file refused)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_loaders.py"
    args = [sys.executable, str(script), "--target", target, *extra, "--out", str(tmp_path / "failures")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["target"] == target
    if target == "snapshot":
        assert last["mutants"] == 20 and sum(last["outcomes"].values()) == 20
        assert last["hangs"] == last["tracebacks"] == 0
    else:
        assert [f["file"] for f in last["files"]] == ["sparse"]  # valid files: tests/reliability/test_memory.py
        assert last["files"][0]["refused"] and last["files"][0]["read_growth_mib"] < 100
