"""Resumable snapshots of a task in training: `<checkpoint>.resume`, written at every epoch end.

A snapshot is a safetensors file (format `wsn-snapshot`, version 2; store.container) holding the
model state, Adam's state, both random generators, the epoch, the history and the best epoch's
state. It is checksummed whole (every tensor, its identity and its state, under one `sha256`),
signed like a checkpoint when $WSN_CHECKPOINT_KEY is set, read with the checkpoint's size limit,
header first. It names what it belongs to: the checkpoint file's sha256 (or, for a new checkpoint,
its settings), the task, every training setting and the digests of the task's training and test
data. Re-running the same `train-task` continues from it, bit for bit on the CPU; anything else,
including any damage, is refused with one line naming it and `--restart` (which discards it). It is
removed when the task's checkpoint is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.data.registry import TaskData
from wsncli.engine.journal import journal
from wsncli.engine.store import container
from wsncli.engine.store.checkpoint import Checkpoint
from wsncli.engine.store.paths import open_regular_file, plan_output, read_at, write_output
from wsncli.engine.store.reader import checkpoint_limit
from wsncli.engine.store.schema import encode_meta
from wsncli.engine.training.loop import TrainSettings, TrainState
from wsncli.engine.training.snapshot_state import check_state
from wsncli.errors import CheckpointError, TaskError

FORMAT_NAME = "wsn-snapshot"
FORMAT_VERSION = 2
SNAPSHOT = container.Spec(
    FORMAT_NAME, FORMAT_VERSION, (FORMAT_VERSION,), frozenset({"identity", "state"}), "wsn snapshot", True
)
SUFFIX = ".resume"
RESTART = "; pass --restart to discard it"


def snapshot_path(real_ckpt: Path) -> Path:
    return real_ckpt.with_name(real_ckpt.name + SUFFIX)


def _digest_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode() + a.tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a checkpoint file, read in pieces (memory: one piece), within the checkpoint limit."""
    h = hashlib.sha256()
    with open_regular_file(path, checkpoint_limit(), "checkpoint", CheckpointError) as (fd, size):
        for offset in range(0, size, 1 << 24):
            h.update(read_at(fd, offset, min(1 << 24, size - offset), path, CheckpointError))
    return h.hexdigest()


class Snapshots:
    """The snapshot of one train-task run: find and check it at the start, write it each epoch."""

    def __init__(self, real_ckpt: Path, ckpt: Checkpoint, req, settings: TrainSettings, data: TaskData) -> None:
        self.path = snapshot_path(real_ckpt)
        self.ckpt, self.settings = ckpt, settings
        self.ckpt_arg = shlex.quote(str(req.ckpt))  # as the user named it, for the commands in messages
        if real_ckpt.exists():
            base = "file:" + file_sha256(real_ckpt)
        else:
            base = "new:" + hashlib.sha256(encode_meta(ckpt.meta)).hexdigest()
        self.identity = {
            "checkpoint": base,
            "task": settings.task,
            "capacity": settings.capacity,
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "seed": settings.seed,
            "method": settings.method,
            "train_data": _digest_arrays(data.raw_train, data.y_train, data.prep.mean, data.prep.std),
            "test_data": data.digest(),
            "torch": torch.__version__,
        }

    def start(self, restart: bool, status: Callable[[str], None]) -> TrainState | None:
        """The state to continue from, or None (no snapshot, or `restart`)."""
        if not os.path.lexists(self.path):
            return None
        if restart:
            self.remove()
            status(f"discarded the snapshot {self.path}")
            return None
        try:
            found = container.decode_path(
                self.path, checkpoint_limit(), SNAPSHOT, container.REQUIRE, _identity, " (WSN_MAX_CHECKPOINT_BYTES)"
            )
        except CheckpointError as exc:
            raise TaskError(f"{exc}{RESTART}") from None
        if found.header.signature == "unverified":
            raise TaskError(
                f"{self.path}: the snapshot is signed; set {container.KEY_ENV} to the key of the run that wrote "
                f"it to continue it{RESTART}"
            )
        if found.tampered:
            raise TaskError(f"{self.path}: tensor {found.tampered[0][:80]!r} fails its checksum (corrupt){RESTART}")
        identity = found.checked
        if identity.get("task") in self.ckpt.learned():
            # left by a run killed after its checkpoint was saved: the task is in the file already
            self.remove()
            status(f"removed the stale snapshot {self.path} (task {identity['task']} is already learned)")
            return None
        if identity.get("task") != self.identity["task"]:
            pending = str(identity.get("task"))[:20]
            raise TaskError(
                f"{self.path} holds task {pending}, stopped after epoch {_stated_epoch(found.header.fields['state'])} "
                f"and not yet saved: finish it with `wsn train-task -c {self.ckpt_arg} -t {pending}` (and the "
                f"options it was started with), or discard it with `wsn train-task -c {self.ckpt_arg} "
                f"-t {self.identity['task']} --restart`"
            )
        if identity != self.identity:
            diff = sorted(k for k in set(identity) | set(self.identity) if identity.get(k) != self.identity.get(k))
            raise TaskError(
                f"{self.path} holds task {str(identity.get('task'))[:20]} trained with other settings or data "
                f"({', '.join(d[:20] for d in diff[:4])} differ); re-run with the same options to continue it, or "
                "pass --restart to discard it"
            )
        frozen = self.ckpt.used_weights() if self.settings.method == "wsn" and self.ckpt.learned() else None
        try:
            state = check_state(found.header.fields["state"], found.arrays, self.ckpt.model, self.settings, frozen)
        except CheckpointError as exc:
            raise TaskError(f"{self.path}: {exc}{RESTART}") from None
        status(f"resuming task {identity['task']} after epoch {state.epoch} from {self.path}")
        return state

    def write(self, state: TrainState) -> None:
        arrays: dict[str, np.ndarray] = {f"model/{k}": v.detach().cpu().numpy() for k, v in state.model.items()}
        if state.best is not None:
            arrays.update({f"best/{k}": v.detach().cpu().numpy() for k, v in state.best.items()})
        for index, entry in state.optimizer["state"].items():
            for key, value in entry.items():
                arrays[f"opt/{index}/{key}"] = torch.as_tensor(value).detach().cpu().numpy()
        arrays["rng/generator"] = state.generator.numpy()
        arrays["rng/torch"] = state.rng.numpy()
        info = {
            "epoch": state.epoch,
            "best_loss": state.best_loss if np.isfinite(state.best_loss) else None,
            "best_epoch": state.best_epoch,
            "history": [vars(h) for h in state.history],
            "seconds": state.seconds,
        }
        info["history"] = [
            {k: (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in h.items()}
            for h in info["history"]
        ]
        fields = {"identity": json.dumps(self.identity, sort_keys=True), "state": json.dumps(info, sort_keys=True)}
        raw = container.encode_file(SNAPSHOT, fields, arrays, container.signing_key())
        write_output(plan_output(self.path, what="snapshot", allow_stream=False, error=TaskError), raw, TaskError)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TaskError(f"{self.path}: cannot remove the snapshot: {exc.strerror or exc}") from None
        journal().removed(self.path)


def _stated_epoch(state_json: str) -> str:
    """The epoch a snapshot's state names, for a message (the state itself is checked later)."""
    try:
        epoch = json.loads(state_json).get("epoch")
    except (ValueError, AttributeError, RecursionError):
        return "?"
    return str(epoch)[:20]


def _identity(header: container.Header) -> dict:
    """The snapshot's identity (a JSON object), before its tensors are read."""
    identity = container.strict_json(header.fields["identity"].encode(), "its identity")
    if not isinstance(identity, dict):
        raise CheckpointError("its identity is not a JSON object")
    return identity
