"""Library use leaves no process-wide state: two learn/eval calls in one process keep the caller's
global random state and thread count, record nothing in the command layer's registries, and give
the same results as the command run in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from wsncli import interrupts
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.usecases.evaluate import evaluate_checkpoint
from wsncli.engine.usecases.learn import TaskRequest, learn_task


def _learn_and_eval(path):
    result = learn_task(TaskRequest(ckpt=path, task=1, epochs=1, device="cpu"))
    report = evaluate_checkpoint(load_checkpoint(path), None, None, torch.device("cpu"))
    assert [t.subnet_match and t.outputs_match for t in report.tasks] == [True]
    return result.record


def test_two_learn_eval_calls_in_one_process_leave_no_state_behind(tmp_path):
    torch.set_num_threads(1)  # the caller's choice (the command chooses 1 for small networks too)
    torch.manual_seed(1234)
    rng, written = torch.get_rng_state(), interrupts.written()
    first = _learn_and_eval(tmp_path / "a.wsn")
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is as the caller left it
    second = _learn_and_eval(tmp_path / "b.wsn")
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == 1
    assert interrupts.written() == written == []  # nothing in the command layer's registry of written files
    assert (first.outputs_digest, first.subnet_digest) == (second.outputs_digest, second.subnet_digest)

    env = {k: v for k, v in os.environ.items() if k != "WSN_CHECKPOINT_KEY"}
    cmd = [sys.executable, "-m", "wsncli", "train-task", "-t", "1", "-c", str(tmp_path / "c.wsn"), "--epochs", "1"]
    subprocess.run([*cmd, "--device", "cpu", "-q"], check=True, env=env, capture_output=True)
    alone = load_checkpoint(tmp_path / "c.wsn").task_record(1)
    assert (alone.outputs_digest, alone.subnet_digest) == (first.outputs_digest, first.subnet_digest)
