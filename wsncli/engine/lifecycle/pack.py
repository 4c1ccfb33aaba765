"""Between a checkpoint's masks and the `.wsnm` packed-mask file (formats does the coding)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import formats
from wsncli.engine.store.checkpoint import Checkpoint
from wsncli.errors import TaskError, WsnError


@dataclass
class PackResult:
    data: bytes
    report: dict


def checkpoint_layer_masks(ckpt: Checkpoint) -> list[formats.LayerMasks]:
    """Every learned task's mask per layer, tasks in learning order (flat bool arrays)."""
    learned = [t for t in ckpt.learned() if t in ckpt.masks]
    if not learned:
        raise TaskError("the checkpoint has no task masks to pack (no task learned, or a finetune checkpoint)")
    return [
        formats.LayerMasks(name, tuple(layer.weight.shape), [ckpt.masks[t][name].cpu().numpy().reshape(-1).astype(bool) for t in learned])
        for name, layer in ckpt.model.subnet_layers().items()
    ]


def pack_checkpoint_masks(ckpt: Checkpoint, codec: str, source: str) -> PackResult:
    """Pack, decode what was written, compare bit for bit, and report the storage figures."""
    if codec not in formats.CODECS:
        raise TaskError(f"unknown codec {codec!r}; choose one of: {', '.join(formats.CODECS)}")
    layers = checkpoint_layer_masks(ckpt)
    task_ids = [t for t in ckpt.learned() if t in ckpt.masks]
    meta = {"source": source, "benchmark": ckpt.meta["benchmark"], "model": ckpt.meta["model"]}
    data = formats.pack(layers, task_ids, codec=codec, meta=meta)
    decoded = formats.unpack(data)
    check_masks_equal(layers, task_ids, decoded)
    report = formats.storage_report(layers, task_ids, codec, packed_size=len(data))
    report["verified"] = True
    return PackResult(data, report)


def check_masks_equal(layers: list[formats.LayerMasks], task_ids: list[int], packed: formats.PackedMasks) -> None:
    """Raise unless `packed` holds exactly these masks (same layers, shapes, tasks, bits)."""
    if list(packed.task_ids) != list(task_ids):
        raise WsnError(f"packed tasks {packed.task_ids} differ from the checkpoint's {task_ids}")
    if [(l.name, tuple(l.shape)) for l in packed.layers] != [(l.name, tuple(l.shape)) for l in layers]:
        raise WsnError("packed layers differ from the checkpoint's layers")
    for ours, theirs in zip(layers, packed.layers):
        for t, a, b in zip(task_ids, ours.masks, theirs.masks):
            if not np.array_equal(np.asarray(a, bool), np.asarray(b, bool)):
                raise WsnError(f"mask of task {t}, layer {ours.name!r} differs after decoding")


def masks_to_arrays(packed: formats.PackedMasks) -> dict[str, np.ndarray]:
    """`task<T>/<layer>` -> bool array of the layer's shape (the checkpoint's form, for np.savez)."""
    return {f"task{t}/{layer.name}": np.asarray(m, bool).reshape(layer.shape) for layer in packed.layers for t, m in zip(packed.task_ids, layer.masks)}


def read_packed(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise formats.FormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise formats.FormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
