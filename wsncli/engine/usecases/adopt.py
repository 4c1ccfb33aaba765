"""`train-task --adopt-unsigned`: with a signing key set, the only way an unsigned (or otherwise
signed) checkpoint becomes a signed one, and never silently.

Every task is re-verified against its recorded data before the file is trusted: re-measured on its
own test set, it must be `proven` (subnetwork digest, record digest, test-data digest and every
prediction identical to what was recorded) and the file must hold no tampered part. What this
cannot show is who wrote the file: a rewrite consistent in every digest re-verifies. Adopting is the
user's explicit statement that they trust the file; the new checkpoint is then signed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsncli.engine.store.checkpoint import Checkpoint
from wsncli.engine.usecases.evaluate import PROVEN, evaluate_checkpoint
from wsncli.errors import CheckpointError

_WHAT = {"unsigned": "unsigned", "invalid": "wrongly signed"}


def adopt(ckpt: Checkpoint, path: Path, data_root: Path | None, device: torch.device) -> str:
    """Re-verify every task of an unsigned or wrongly signed `ckpt`; the message to show, or
    CheckpointError naming the first task that is not proven (nothing is written then)."""
    what = _WHAT[ckpt.signature]
    refuse = f"{path}: cannot adopt this {what} checkpoint"
    if ckpt.tampered:
        raise CheckpointError(f"{refuse}: {ckpt.tampered[0]}; nothing was changed")
    report = evaluate_checkpoint(ckpt, None, data_root, device)
    if report.tampered:
        raise CheckpointError(f"{refuse}: {report.tampered[0]}; nothing was changed")
    for task in report.tasks:
        if task.status != PROVEN:
            raise CheckpointError(
                f"{refuse}: task {task.task} re-verifies as {task.status}, not proven (its data, predictions and "
                "digests must all be as recorded); nothing was changed"
            )
    tasks = ", ".join(str(t.task) for t in report.tasks) or "none"
    return (
        f"adopted the {what} checkpoint {path}: re-verified every task against its recorded data (task(s) {tasks} "
        "proven: same test data, predictions and digests as recorded); the new file is signed"
    )
