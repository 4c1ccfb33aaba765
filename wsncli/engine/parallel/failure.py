"""How a data-parallel run ends when anything goes wrong: every process the same way, within seconds.

- A failure of any kind on any process (a WsnError, a RuntimeError, a CUDA out-of-memory, a lost
  peer): the process records `rank R failed: <error>` and its exit code in the group's key-value
  store (the one torchrun's rendezvous made; the first record wins), then raises it. Leaving closes
  its connections, so a process waiting for it in a collective gets an error at once, finds the
  record and raises the same failure: every process prints that one line and exits with that code.
  A WsnError keeps its exit code; anything else exits 1.
- torchrun stops the other processes with SIGTERM as soon as one exits with an error; a process
  signalled while a failure is recorded raises that failure, not "terminated", so the line and the
  exit code stay the same.
- SIGTERM and SIGINT reach every process even when its main thread is blocked in a collective whose
  peer hangs (Python's handler cannot run there): a watchdog thread ends it a few seconds later with
  one line (the command layer's watchdog, engine.journal).
"""

from __future__ import annotations

import json

import torch.distributed as dist

from wsncli.engine.journal import IGNORE, journal
from wsncli.errors import ParallelFailure, WsnError

KEY = "wsn/failure"


def _record(rank: int, error: BaseException) -> str:
    if isinstance(error, WsnError):
        message, code = str(error), error.exit_code
    else:
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        message, code = f"{type(error).__name__}: {first_line}".rstrip(": "), 1
    return json.dumps({"rank": rank, "message": message, "code": code})


def _failure(record: bytes | str) -> ParallelFailure:
    info = json.loads(record)
    return ParallelFailure(f"rank {info['rank']} failed: {info['message']}", int(info["code"]))


class Agreement:
    """This process's side of the agreement on how the run ends."""

    def __init__(self, rank: int) -> None:
        """Made before the process group (joining it may wait on a hung peer too): signals are watched
        from then on; failures are shared once `attach` gives the group's store."""
        self.rank = rank
        self.agreed: ParallelFailure | None = None
        self.store = None
        journal().on_signal(self._on_signal)
        journal().start_watchdog(self._describe)

    def attach(self) -> None:
        """Share failures through the initialised process group's store."""
        try:
            self.store = dist.distributed_c10d._get_default_store()
        except (RuntimeError, ValueError):  # no store: failures stay this process's own
            self.store = None

    def fail(self, error: BaseException) -> ParallelFailure:
        """The failure to raise for `error`: the first recorded by any process (this one's if none was)."""
        if self.agreed is None:
            mine = _record(self.rank, error)
            stored: bytes | str = mine
            if self.store is not None:
                try:
                    stored = self.store.compare_set(KEY, "", mine)  # sets it unless a record is there
                except (RuntimeError, ValueError):
                    pass
            self.agreed = _failure(stored)
        return self.agreed

    def recorded(self) -> ParallelFailure | None:
        """The failure some process recorded, if any."""
        if self.agreed is not None or self.store is None:
            return self.agreed
        try:
            return _failure(self.store.get(KEY)) if self.store.check([KEY]) else None
        except (RuntimeError, ValueError):
            return None

    def _on_signal(self, _signum: int):
        if self.agreed is not None:
            return IGNORE  # already leaving with the agreed failure
        self.agreed = self.recorded()  # the launcher stopping this process after another one failed
        return self.agreed

    def _describe(self, _signum: int) -> tuple[str, int] | None:
        failure = self.recorded()
        return None if failure is None else (str(failure), failure.exit_code)
