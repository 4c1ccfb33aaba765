"""Resumable snapshots of a task in training: `<checkpoint>.resume`, written at every epoch end.

A snapshot is a safetensors file (format `wsn-snapshot`, version 1; store.container: checksummed,
size-checked, no code execution) holding the model state, Adam's state, both random generators, the
epoch, the history and the best epoch's state. It names what it belongs to: the checkpoint file's
sha256 (or, for a new checkpoint, its settings), the task, every training setting and the digests of
the task's training and test data. Re-running the same `train-task` continues from it, bit for bit on
the CPU; anything else is refused with one line (`--restart` discards the snapshot). It is removed
when the task's checkpoint is saved.
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
from wsncli.engine.store import container
from wsncli.engine.store.checkpoint import Checkpoint
from wsncli.engine.store.paths import plan_output, read_regular_file, write_output
from wsncli.engine.store.schema import encode_meta
from wsncli.engine.training.loop import EpochStats, TrainSettings, TrainState
from wsncli.errors import CheckpointError, TaskError
from wsncli.interrupts import record_removed

FORMAT_NAME = "wsn-snapshot"
FORMAT_VERSION = 1
SUFFIX = ".resume"


def snapshot_path(real_ckpt: Path) -> Path:
    return real_ckpt.with_name(real_ckpt.name + SUFFIX)


def _digest_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode() + a.tobytes())
    return h.hexdigest()


class Snapshots:
    """The snapshot of one train-task run: find and check it at the start, write it each epoch."""

    def __init__(self, real_ckpt: Path, ckpt: Checkpoint, req, settings: TrainSettings, data: TaskData) -> None:
        self.path = snapshot_path(real_ckpt)
        self.ckpt = ckpt
        self.ckpt_arg = shlex.quote(str(req.ckpt))  # as the user named it, for the commands in messages
        if real_ckpt.exists():
            base = (
                "file:"
                + hashlib.sha256(read_regular_file(real_ckpt, 1 << 40, "checkpoint", CheckpointError)).hexdigest()
            )
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
        raw = read_regular_file(self.path, 1 << 40, "snapshot", TaskError)
        try:
            fields, arrays, tampered, _ = container.decode_file(
                raw, FORMAT_NAME, FORMAT_VERSION, {"identity", "state"}, "wsn snapshot"
            )
        except CheckpointError as exc:
            raise TaskError(f"{self.path}: {exc}; pass --restart to discard it") from None
        if tampered:
            raise TaskError(
                f"{self.path}: tensor {tampered[0]!r} fails its checksum (corrupt); pass --restart to discard it"
            )
        identity = json.loads(fields["identity"])
        if isinstance(identity, dict) and identity.get("task") in self.ckpt.learned():
            # left by a run killed after its checkpoint was saved: the task is in the file already
            self.remove()
            status(f"removed the stale snapshot {self.path} (task {identity['task']} is already learned)")
            return None
        if isinstance(identity, dict) and identity.get("task") != self.identity["task"]:
            pending = identity.get("task")
            raise TaskError(
                f"{self.path} holds task {pending}, stopped after epoch {json.loads(fields['state']).get('epoch')} "
                f"and not yet saved: finish it with `wsn train-task -c {self.ckpt_arg} -t {pending}` (and the "
                f"options it was started with), or discard it with `wsn train-task -c {self.ckpt_arg} "
                f"-t {self.identity['task']} --restart`"
            )
        if identity != self.identity:
            diff = sorted(k for k in set(identity) | set(self.identity) if identity.get(k) != self.identity.get(k))
            raise TaskError(
                f"{self.path} holds task {identity.get('task')} trained with other settings or data "
                f"({', '.join(diff[:4])} differ); re-run with the same options to continue it, or pass --restart "
                "to discard it"
            )
        state = _state_from(json.loads(fields["state"]), arrays)
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
        raw = container.encode_file(FORMAT_NAME, FORMAT_VERSION, fields, arrays)
        write_output(plan_output(self.path, what="snapshot", allow_stream=False, error=TaskError), raw, TaskError)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TaskError(f"{self.path}: cannot remove the snapshot: {exc.strerror or exc}") from None
        record_removed(self.path)


def _state_from(info: dict, arrays: dict[str, np.ndarray]) -> TrainState:
    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith(prefix)}

    opt: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in group("opt/").items():
        index, name = key.split("/", 1)
        opt.setdefault(int(index), {})[name] = value
    history = [
        EpochStats(**{k: (float("nan") if v is None and k != "is_best" else v) for k, v in h.items()})
        for h in info["history"]
    ]
    best = group("best/") or None
    best_loss = float("inf") if info["best_loss"] is None else float(info["best_loss"])
    return TrainState(
        int(info["epoch"]),
        group("model/"),
        {"state": opt, "param_groups": None},
        group("rng/")["generator"],
        group("rng/")["torch"],
        best_loss,
        int(info["best_epoch"]),
        best,
        history,
        float(info.get("seconds", 0.0)),
    )
