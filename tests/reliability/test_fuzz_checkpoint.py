"""Fuzzing `load_checkpoint`: only a WsnError may escape, never another exception, never a hang."""

from __future__ import annotations

import random
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.fuzzing import exercise, mutated_checkpoint
from tests.reliability.payloads import load_payload, make_tiny_checkpoint

HANG_SECONDS = 20
COMMON = dict(deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])


_VALID: list = []  # (bytes, payload, scratch path); module state, so hypothesis never prints it


@pytest.fixture(scope="module", autouse=True)
def _valid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    data = make_tiny_checkpoint(folder / "tiny.pt").read_bytes()
    _VALID[:] = [(data, load_payload(data), folder / "mutant.pt")]
    yield
    _VALID.clear()


class _Hang(Exception):
    pass


def _raise_hang(signum, frame):
    raise _Hang(f"loading took more than {HANG_SECONDS} s")


def _check(rnd: random.Random, level: str) -> None:
    data, payload, path = _VALID[0]
    mutant = mutated_checkpoint(data, payload, rnd, level)
    if mutant is None:
        return
    path.write_bytes(mutant)
    previous = signal.signal(signal.SIGALRM, _raise_hang)
    signal.alarm(HANG_SECONDS)
    try:
        exercise(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=350, **COMMON)
@given(rnd=st.randoms(use_true_random=False))
def test_fuzz_file_bytes(rnd):
    _check(rnd, "bytes")


@settings(max_examples=300, **COMMON)
@given(rnd=st.randoms(use_true_random=False))
def test_fuzz_pickle_inside_valid_zip(rnd):
    _check(rnd, "pickle")


@settings(max_examples=400, **COMMON)
@given(rnd=st.randoms(use_true_random=False))
def test_fuzz_payload_structure(rnd):
    _check(rnd, "payload")


def test_mutators_reach_past_the_checksums():
    """The payload fuzzer is not just testing checksums: many mutants get to the validators, and
    some are loaded and used (which is when a missed check would crash later code)."""
    data, payload, path = _VALID[0]
    outcomes = []
    rnd = random.Random(1)
    for _ in range(150):
        mutant = mutated_checkpoint(data, payload, rnd, "payload")
        if mutant is not None:
            path.write_bytes(mutant)
            outcomes.append(exercise(path))
    assert outcomes.count("loaded") >= 5, outcomes
    assert outcomes.count("CheckpointError") >= 50, outcomes
