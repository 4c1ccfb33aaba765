"""`wsn` with a fault injected into one process of a torchrun group: a test tool, never installed.

torchrun runs `python tests/engine/parallel_inject.py train-task ...` instead of `-m wsncli`; this
patches the training step of the installed wsn, then runs its command line unchanged. The fault is
set by the environment (read here only):

- WSN_TEST_FAULT: `raise` (a RuntimeError), `hang` (block in a receive no one answers, in C code,
  where Python's signal handlers cannot run), `kill` (SIGKILL itself, only in torchrun's first
  attempt, so a restarted group runs clean);
- WSN_TEST_FAULT_RANK, WSN_TEST_FAULT_STEP: which process, at which of its training steps (from 1,
  counted over the epochs it runs);
- WSN_TEST_MARK: a file written just before the fault (the test waits for it);
- WSN_TEST_SNAPSHOT_LOG: a file to which every process that looks at the `.resume` snapshot appends
  its rank.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from wsncli.engine.training import loop, snapshot

RANK = int(os.environ.get("RANK", "0"))
FAULT = os.environ.get("WSN_TEST_FAULT", "")
FAULT_RANK = int(os.environ.get("WSN_TEST_FAULT_RANK", "-1"))
FAULT_STEP = int(os.environ.get("WSN_TEST_FAULT_STEP", "0"))
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
steps = 0


def _fault() -> None:
    if os.environ.get("WSN_TEST_MARK"):
        Path(os.environ["WSN_TEST_MARK"]).write_text(str(os.getpid()))
    if FAULT == "raise":
        raise RuntimeError(f"injected failure at step {steps}")
    if FAULT == "hang":
        import torch
        import torch.distributed as dist

        dist.recv(torch.zeros(1), src=(RANK + 1) % dist.get_world_size())  # never sent
    if FAULT == "kill" and FIRST_ATTEMPT:
        os.kill(os.getpid(), signal.SIGKILL)


_step = loop._Run._step


def step(self, xb, yb):
    global steps
    steps += 1
    if RANK == FAULT_RANK and steps == FAULT_STEP:
        _fault()
    return _step(self, xb, yb)


loop._Run._step = step

if os.environ.get("WSN_TEST_SNAPSHOT_LOG"):
    _start = snapshot.Snapshots.start

    def start(self, restart, status):
        with open(os.environ["WSN_TEST_SNAPSHOT_LOG"], "a") as log:
            log.write(f"{RANK}\n")
        return _start(self, restart, status)

    snapshot.Snapshots.start = start

if __name__ == "__main__":
    from wsncli.cli import main

    sys.argv[0] = "wsn"
    main()
