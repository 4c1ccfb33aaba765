"""Between a checkpoint's masks and the `.wsnm` packed-mask file (formats does the coding).

Works on the file as read (numpy), so packing never needs torch."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import formats
from wsncli.engine.store.paths import file_prefix, plan_output, write_output
from wsncli.engine.store.reader import CheckpointFile, read_checkpoint_file
from wsncli.engine.usecases.unpack import file_kind, unpack_file
from wsncli.errors import TaskError, UsageError, WsnError

SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,255}")  # a layer name that is safe in an npz member name


@dataclass
class PackResult:
    data: bytes
    report: dict
    codec: str  # the codec used (what `auto` chose)


def checkpoint_layer_masks(ckpt: CheckpointFile) -> tuple[list[formats.LayerMasks], list[int]]:
    """Every learned task's mask per layer, tasks in learning order (flat bool arrays)."""
    tasks = [r.task for r in ckpt.meta.tasks if r.task in ckpt.masks]
    if not tasks:
        raise TaskError("the checkpoint has no task masks to pack (no task learned, or a finetune checkpoint)")
    layers = [
        formats.LayerMasks(layer.name, tuple(layer.shape), [ckpt.masks[t][layer.name] for t in tasks])
        for layer in ckpt.meta.layers
    ]
    return layers, tasks


def pack_checkpoint_masks(ckpt: CheckpointFile, codec: str, source: str) -> PackResult:
    """Pack, decode what was written, compare bit for bit, and report the storage figures."""
    if codec not in formats.PACK_CODECS:
        raise UsageError(f"unknown codec {codec!r}; choose one of: {', '.join(formats.PACK_CODECS)}")
    layers, tasks = checkpoint_layer_masks(ckpt)
    meta = {"source": source[:256], "benchmark": ckpt.meta.benchmark}
    data = formats.pack(layers, tasks, codec=codec, meta=meta)
    decoded = formats.unpack(data, max_bits=sum(int(np.prod(l.shape)) for l in layers) * len(tasks))
    check_masks_equal(layers, tasks, decoded)
    report = formats.storage_report(layers, tasks, decoded.codec, packed_size=len(data))
    report["requested_codec"] = codec
    report["verified"] = True
    return PackResult(data, report, decoded.codec)


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
    """`task<T>/<layer>` -> bool array of the layer's shape (for np.savez); unsafe layer names refused."""
    out = {}
    for layer in packed.layers:
        if not SAFE_NAME.fullmatch(layer.name) or ".." in layer.name:
            raise formats.FormatError(
                f"layer name {layer.name[:40]!r} is not safe as an npz member name (letters, digits, _ . - only)"
            )
        for t, m in zip(packed.task_ids, layer.masks):
            out[f"task{t}/{layer.name}"] = np.asarray(m, bool).reshape(layer.shape)
    return out


def pack_file(ckpt: Path, output: Path | None, codec: str, force: bool = False) -> PackResult:
    """`wsn pack-masks` in one call: plan the output (before any work: never the checkpoint itself, never
    a file of another kind), pack and verify, write. `output` None: the caller writes `data` (stdout)."""
    target = None
    if output is not None:
        target = plan_output(
            output,
            what="packed-mask file",
            inputs=[ckpt],
            force=force,
            is_own_kind=lambda p: file_kind(file_prefix(p, 16)) == "packed-masks",
        )
    result = pack_checkpoint_masks(read_checkpoint_file(ckpt), codec, source=Path(ckpt).name)
    if target is not None:
        write_output(target, result.data)
    return result


def unpack_masks_file(packed: Path, output: Path | None, ckpt: Path | None, force: bool = False) -> formats.PackedMasks:
    """`wsn unpack-masks` in one call: decode a .wsnm file, check it bit for bit against `ckpt` when
    given (TaskError/UsageError on any difference), write the masks as an .npz when `output` is given."""
    target = None
    if output is not None:
        target = plan_output(
            output,
            what="masks .npz",
            inputs=[p for p in (packed, ckpt) if p is not None],
            force=force,
            is_own_kind=lambda p: file_kind(file_prefix(p, 4096)) == "npz",
        )
    decoded = unpack_file(packed)
    if ckpt is not None:
        layers, tasks = checkpoint_layer_masks(read_checkpoint_file(ckpt))
        check_masks_equal(layers, tasks, decoded)
    if target is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **masks_to_arrays(decoded))
        write_output(target, buffer.getvalue())
    return decoded
