"""`forget-task`: remove a learned task from a checkpoint, releasing the weights only it depended on.

What is removed (docs/FORGET.md): task T's mask, head, BatchNorm statistics, biases, transform, label
mapping, record, recorded predictions, its row of the accuracy matrix and its column in every later
row. Weights: T trained the weights of its mask that were free before it (earlier tasks' masks did
not hold them). Those no remaining task uses are released: free again, trainable by later tasks.
Those later tasks use stay frozen and keep T's influence (their functions depend on them).
Every weight free afterwards (released, or moved by some task's training and in no mask) is set
back to its initial value, and every score too (both are rebuilt from the checkpoint's seed as
train-task made them): nothing of T's training is left in free weights or in the scores that pick
later masks. Every remaining task's subnetwork digest is recomputed before anything is written.
The checkpoint changes by one atomic rename, under the lock, signed by the rule of train-task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wsncli.engine.nn.models import build_model
from wsncli.engine.nn.user import ArchModule
from wsncli.engine.store.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from wsncli.engine.store.container import KEY_ENV, REQUIRE
from wsncli.engine.store.lock import CheckpointLock
from wsncli.engine.store.paths import plan_output, remove_stale_temps
from wsncli.engine.training import snapshot as resume
from wsncli.engine.usecases.evaluate import capacity_used
from wsncli.engine.usecases.outputs import subnet_digest
from wsncli.errors import CheckpointError, TaskError, UsageError


@dataclass(frozen=True)
class ForgetRequest:
    ckpt: Path
    task: int
    arch: ArchModule | None = None  # the trunk factory of a network from --arch-module


@dataclass
class ForgetResult:
    task: int
    trained: int  # weights task T trained: in its mask, free before it
    released: int  # of those, used by no remaining task: free again
    still_used_by: dict[int, int] = field(default_factory=dict)  # remaining task -> T-trained weights in its mask
    still_used: int = 0  # T-trained weights some remaining task uses (kept frozen)
    released_per_layer: dict[str, int] = field(default_factory=dict)
    capacity_before: float = 0.0
    capacity_after: float = 0.0
    learned: list[int] = field(default_factory=list)  # remaining tasks, learning order
    checkpoint_bytes: int = 0


def weight_accounting(ckpt: Checkpoint, task: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights `task` trained, those of them no other learned task uses) per layer (bool, weight shape)."""
    order = ckpt.learned()
    earlier, others = order[: order.index(task)], [t for t in order if t != task]
    before, rest = ckpt.used_weights(earlier), ckpt.used_weights(others)
    trained = {name: ckpt.masks[task][name] & ~before[name] for name in before}
    return trained, {name: trained[name] & ~rest[name] for name in trained}


def _check(ckpt: Checkpoint, req: ForgetRequest) -> None:
    learned = ckpt.learned()
    if req.task not in learned:
        raise TaskError(
            f"task {req.task} is not learned in {req.ckpt} (learned: {', '.join(map(str, learned)) or 'none'}); "
            "nothing to forget"
        )
    if ckpt.meta.method != "wsn":
        raise UsageError(
            f"{req.ckpt}: forget-task needs a wsn checkpoint; in a fine-tune baseline every task shares every weight"
        )
    if ckpt.signature == "unverified":
        raise CheckpointError(
            f"{req.ckpt}: the checkpoint is signed; set {KEY_ENV} to the key it was signed with to forget a task "
            "(without it the new file would be unsigned)"
        )
    if ckpt.tampered:
        raise CheckpointError(f"{req.ckpt}: {ckpt.tampered[0]}; refusing to rewrite a damaged checkpoint")
    for record in ckpt.tasks:
        digest = subnet_digest(
            ckpt.model, record.task, ckpt.masks[record.task], ckpt.preps.get(record.task), record.digest_version
        )
        if digest != record.subnet_digest:
            raise CheckpointError(
                f"{req.ckpt}: task {record.task}'s subnetwork fails its digest (wsn eval says more); refusing to "
                "rewrite it"
            )


def _initial_parameters(ckpt: Checkpoint) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every masked layer's (weight, scores) as train-task initialised them (seeded, before task 1)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ckpt.meta.seed)
        fresh = build_model(ckpt.model.config)  # with an arch module's factory, as train-task built it
    return {n: (layer.weight.detach(), layer.scores.detach()) for n, layer in fresh.subnet_layers().items()}


def remove_task(ckpt: Checkpoint, task: int) -> ForgetResult:
    """Forget `task` in memory (no file is touched); returns the accounting."""
    order = ckpt.learned()
    position = order.index(task)
    trained, released = weight_accounting(ckpt, task)
    remaining = [t for t in order if t != task]
    result = ForgetResult(
        task=task,
        trained=sum(int(m.sum()) for m in trained.values()),
        released=sum(int(m.sum()) for m in released.values()),
        released_per_layer={name: int(m.sum()) for name, m in released.items()},
        capacity_before=capacity_used(ckpt) or 0.0,
    )
    for other in remaining:
        shared = sum(int((trained[n] & ckpt.masks[other][n]).sum()) for n in trained)
        if shared:
            result.still_used_by[other] = shared
    result.still_used = result.trained - result.released
    model = ckpt.model
    for store in (model.heads, model.task_norms, model.task_biases):
        if str(task) in store:
            del store[str(task)]
    for store in (ckpt.masks, ckpt.preps, ckpt.predictions):
        store.pop(task, None)
    ckpt.meta.tasks = [r for r in ckpt.meta.tasks if r.task != task]
    for i, record in enumerate(ckpt.meta.tasks):
        record.order = i + 1
        if i >= position and len(record.accuracy_row) > position:  # later rows: T's column goes
            record.accuracy_row = record.accuracy_row[:position] + record.accuracy_row[position + 1 :]
        record.record_digest = None  # restamped on saving (orders and rows changed)
    used = ckpt.used_weights(remaining)
    initial = _initial_parameters(ckpt)
    with torch.no_grad():
        for name, layer in model.subnet_layers().items():
            weight, scores = initial[name]
            layer.weight.copy_(torch.where(used[name], layer.weight, weight))  # free weights: initial values
            layer.scores.copy_(scores)
    result.capacity_after = capacity_used(ckpt) or 0.0
    result.learned = remaining
    for record in ckpt.tasks:  # the proof: every remaining task's subnetwork is bit-identical
        digest = subnet_digest(
            model, record.task, ckpt.masks[record.task], ckpt.preps.get(record.task), record.digest_version
        )
        if digest != record.subnet_digest:
            raise RuntimeError(f"internal error: forgetting task {task} changed task {record.task}; nothing written")
    return result


def forget_task(req: ForgetRequest) -> ForgetResult:
    """Forget one task of the checkpoint at req.ckpt; the file changes only by one atomic rename."""
    target = plan_output(req.ckpt, what="checkpoint", allow_stream=False, error=CheckpointError)
    if not os.path.lexists(target.real):
        raise CheckpointError(f"{req.ckpt}: no such checkpoint")
    with CheckpointLock(req.ckpt):
        remove_stale_temps(target.real)
        if os.path.lexists(resume.snapshot_path(target.real)):
            raise UsageError(
                f"{req.ckpt}: a train-task in progress left {resume.snapshot_path(target.real).name}; finish it "
                "(or train-task --restart) before forgetting a task"
            )
        ckpt = load_checkpoint(target.real, REQUIRE, req.arch)
        _check(ckpt, req)
        result = remove_task(ckpt, req.task)
        result.checkpoint_bytes = save_checkpoint(ckpt, target)
    return result
