"""What a checkpoint holds: tasks in learning order, per-layer capacity, mask reuse, size by part.

Works on the file as read (store.reader: numpy arrays, typed metadata), so inspecting a version-2 or 3
checkpoint never imports torch and starts in well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsncli.engine.store.reader import CheckpointFile
from wsncli.engine.store.schema import TaskRecord


@dataclass(frozen=True)
class TaskSummary:
    record: TaskRecord
    mask_density: float | None  # kept / all masked weights (None: finetune)
    reuse_of_earlier: float | None  # share of the mask's weights that earlier tasks already use
    new_weights: int | None
    layers: dict[str, tuple[float, int]] = field(default_factory=dict)  # layer -> (density, reused)


@dataclass(frozen=True)
class LayerSummary:
    name: str
    shape: tuple[int, ...]
    weights: int
    used: int  # by any learned task

    @property
    def free(self) -> int:
        return self.weights - self.used


@dataclass(frozen=True)
class CheckpointDescription:
    path: str
    version: int
    file: CheckpointFile
    tasks: list[TaskSummary]
    layers: list[LayerSummary]
    capacity_used: float | None  # None: finetune
    size: dict[str, int]  # bytes by part
    capacity_after: list[dict[str, float]]  # per learned task: layer -> fraction used by tasks so far


def _part(name: str) -> str:
    kind = name.split("/", 1)[0]
    if kind == "layer":
        return "weights" if name.endswith("/weight") else "scores"
    return {"head": "heads", "norm": "norms", "prep": "transforms", "pred": "recorded_predictions"}.get(kind, "other")


def describe_checkpoint(ckpt: CheckpointFile, path: Path) -> CheckpointDescription:
    """A typed description of the checkpoint (what `wsn inspect` prints)."""
    layers = [(layer.name, tuple(layer.shape)) for layer in ckpt.meta.layers]
    sizes = {name: math.prod(shape) for name, shape in layers}
    seen = {name: np.zeros(n, bool) for name, n in sizes.items()}
    total = sum(sizes.values())
    tasks, after = [], []
    for record in ckpt.meta.tasks:
        masks = ckpt.masks.get(record.task)
        if masks is None:
            tasks.append(TaskSummary(record, None, None, None))
            continue
        per_layer, kept, reused = {}, 0, 0
        for name, n in sizes.items():
            k, r = int(masks[name].sum()), int((masks[name] & seen[name]).sum())
            per_layer[name] = (k / n, r)
            kept, reused = kept + k, reused + r
            seen[name] |= masks[name]
        tasks.append(TaskSummary(record, kept / total, reused / kept if kept else 0.0, kept - reused, per_layer))
        after.append({name: float(seen[name].mean()) for name in sizes})
    wsn = ckpt.meta.method == "wsn"
    learned = bool(ckpt.meta.tasks)
    rows = [
        LayerSummary(name, shape, sizes[name], int(seen[name].sum()) if wsn else (sizes[name] if learned else 0))
        for name, shape in layers
    ]
    used = sum(r.used for r in rows)
    size = {"weights": 0, "scores": 0, "heads": 0, "norms": 0, "transforms": 0, "recorded_predictions": 0, "other": 0}
    for name, arr in ckpt.arrays.items():
        size[_part(name)] += int(arr.nbytes)
    size["masks"] = ckpt.mask_bytes
    size["file"] = ckpt.size
    size["metadata_and_container"] = ckpt.size - sum(v for k, v in size.items() if k != "file")
    return CheckpointDescription(
        str(path), ckpt.version, ckpt, tasks, rows, used / total if wsn and total else None, size, after
    )


def inspect_file(path: Path) -> tuple[str, CheckpointDescription | dict]:
    """`wsn inspect` in one call: ("packed-masks", the .wsnm file's description) or ("checkpoint", the
    checkpoint's description), every checksum verified."""
    from wsncli.engine.store.reader import read_checkpoint_data
    from wsncli.engine.usecases.unpack import describe_file, file_kind, read_packed_file

    data = read_packed_file(path, accept_checkpoints=True)
    if file_kind(data) == "packed-masks":
        return "packed-masks", describe_file(path, data)
    return "checkpoint", describe_checkpoint(read_checkpoint_data(path, data), path)
