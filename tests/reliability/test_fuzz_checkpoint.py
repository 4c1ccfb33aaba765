"""Fuzzing `load_checkpoint`: it loads or raises CheckpointError, nothing else; never a hang, never
more memory than a small bound.

Version-1 mutants start from the golden file of wsn 0.1.1 (wsn writes version 2 only); version-2
mutants from a tiny checkpoint wsn writes, at the byte level and structure-aware with checksums
recomputed (tests/reliability/mutate_v2.py). A mutant that loads is then used as every command
would (tests/reliability/fuzzing.py `exercise`).
"""

from __future__ import annotations

import random
import resource
import signal
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.fuzzing import exercise, mutated_checkpoint
from tests.reliability.mutate_v2 import mutate_v2
from tests.reliability.payloads import golden_v1, load_payload, make_tiny_checkpoint

HANG_SECONDS = 20
TRACED_LIMIT = 64 << 20  # bytes Python and numpy may hold at once while one mutant is loaded and used
RSS_GROWTH_LIMIT = 256 << 10  # KiB of peak-RSS growth over a whole test (torch's allocations are not traced)
SEEDS = st.integers(0, 2**64 - 1)  # seeds of random.Random: uniform choices (hypothesis' own randoms favour the first)
COMMON = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


_VALID: dict = {}  # module state, so hypothesis never prints it


@pytest.fixture(scope="module", autouse=True)
def _valid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    v1 = golden_v1()
    _VALID.update(
        v1=v1,
        payload=load_payload(v1),
        v2=make_tiny_checkpoint(folder / "tiny.pt").read_bytes(),
        path=folder / "mutant.pt",
    )
    yield
    _VALID.clear()


@pytest.fixture(autouse=True)
def _bounded(monkeypatch):
    """No signing key from the environment; tracemalloc on; peak RSS must not grow much."""
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    monkeypatch.delenv("WSN_MAX_CHECKPOINT_BYTES", raising=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < RSS_GROWTH_LIMIT, f"peak RSS grew by {grown} KiB while fuzzing"


class _Hang(Exception):
    pass


def _raise_hang(signum, frame):
    raise _Hang(f"loading took more than {HANG_SECONDS} s")


def _check(rnd: random.Random, level: str) -> str:
    valid = _VALID["v1"] if level.startswith("v1") else _VALID["v2"]
    mutant = mutated_checkpoint(valid, _VALID["payload"], rnd, level)
    if mutant is None:
        return "unwritable"
    path = _VALID["path"]
    path.write_bytes(mutant)
    previous = signal.signal(signal.SIGALRM, _raise_hang)
    signal.alarm(HANG_SECONDS)
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        outcome = exercise(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    peak = tracemalloc.get_traced_memory()[1] - base
    assert peak < TRACED_LIMIT, f"{level} mutant held {peak >> 20} MiB while loading"
    assert outcome in ("loaded", "CheckpointError"), outcome
    return outcome


@settings(max_examples=200, **COMMON)
@given(seed=SEEDS)
def test_fuzz_file_bytes(seed):
    _check(random.Random(seed), "v1-bytes")


@settings(max_examples=150, **COMMON)
@given(seed=SEEDS)
def test_fuzz_pickle_inside_valid_zip(seed):
    _check(random.Random(seed), "v1-pickle")


@settings(max_examples=200, **COMMON)
@given(seed=SEEDS)
def test_fuzz_payload_structure(seed):
    _check(random.Random(seed), "v1-payload")


@settings(max_examples=250, **COMMON)
@given(seed=SEEDS)
def test_fuzz_v2_file_bytes(seed):
    _check(random.Random(seed), "v2-bytes")


@settings(max_examples=700, **COMMON)
@given(seed=SEEDS)
def test_fuzz_v2_structure_with_checksums_recomputed(seed):
    _check(random.Random(seed), "v2-structure")


def test_mutators_reach_past_the_checksums():
    """The structure-aware fuzzers are not just testing checksums: many mutants get to the
    validators behind them, some are loaded and used (which is when a missed check would crash
    later code), and the version-2 mutants hit every kind of change."""
    for level in ("v1-payload", "v2-structure"):
        rnd = random.Random(1)
        outcomes = [_check(rnd, level) for _ in range(100)]
        assert outcomes.count("loaded") >= 4, (level, outcomes)
        assert outcomes.count("CheckpointError") >= 40, (level, outcomes)
    rnd = random.Random(2)
    kinds = set()
    for _ in range(300):
        kinds.update(mutate_v2(_VALID["v2"], rnd)[0].split("+"))
    assert kinds == {"meta", "metadata", "entry", "tensors", "masks", "header", "path", "nullable"}


def test_v2_refusals_are_not_only_checksum_failures():
    """With checksums recomputed, most refusals come from the checks behind them (schema, entries,
    shapes, masks), not from a failing checksum."""
    from wsncli.engine.store.checkpoint import load_checkpoint
    from wsncli.errors import CheckpointError

    rnd, messages = random.Random(3), []
    path = _VALID["path"]
    for _ in range(200):
        path.write_bytes(mutate_v2(_VALID["v2"], rnd)[1])
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            messages.append(str(exc))
    behind = [m for m in messages if "checksum" not in m]
    assert len(behind) >= 0.7 * len(messages), messages[:20]
    assert any("metadata is invalid" in m for m in messages) and any("tensor" in m and "dtype" in m for m in messages)
    assert any("masks tensor" in m for m in messages)


def test_the_long_fuzzer_reports_one_json_line(tmp_path):
    """benchmarks/fuzz_loaders.py --target checkpoint runs the same mutators and ends with one JSON
    line counting mutants, refusal classes, accepted files, hangs, tracebacks and memory growth."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_loaders.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--target",
            "checkpoint",
            "--iterations",
            "20",
            "--structure-iterations",
            "40",
            "--out",
            str(tmp_path / "failures"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (
        last["target"] == "checkpoint"
        and last["mutants"] == 60
        and last["byte_level"] == 20
        and last["structure_aware"] == 40
    )
    assert set(last["by_level"]) == {"v1-bytes", "v2-bytes", "v2-structure", "v1-payload", "v1-pickle"}
    assert last["accepted"] + last["refused"] + last["unwritable"] == 60 and last["refusal_classes"]
    assert (
        last["hangs"] == last["tracebacks"] == 0 and last["memory_flag"] is False and last["peak_rss_growth_mib"] < 256
    )
    assert not (tmp_path / "failures").exists()
