"""Reading a checkpoint file of either version into numpy arrays and typed metadata (no torch for
version 2, so `wsn inspect` starts fast): size limit, container checks, masks decoded and checked
against the metadata. Building the network from it is store.checkpoint's job."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import formats
from wsncli.engine.limits import env_limit
from wsncli.engine.store import container
from wsncli.engine.store.legacy_v1 import ZIP_MAGIC
from wsncli.engine.store.paths import file_prefix, read_regular_file
from wsncli.engine.store.schema import CheckpointMeta, decode_meta
from wsncli.errors import CheckpointError, UsageError

MAX_CHECKPOINT_BYTES = 16 * 2**30  # default of $WSN_MAX_CHECKPOINT_BYTES
MASKS = "masks"  # the tensor holding every task's masks as a .wsnm file


@dataclass
class CheckpointFile:
    """A checkpoint as read: typed metadata, arrays by name, each wsn task's masks (flat bool)."""

    version: int
    meta: CheckpointMeta
    arrays: dict[str, np.ndarray]
    masks: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    tampered: list[str] = field(default_factory=list)
    signature: str = "unsigned"
    size: int = 0
    mask_codec: str | None = None  # version 2: the codec of the masks tensor (version 1: packbits)
    mask_bytes: int = 0


def checkpoint_limit() -> int:
    """The largest checkpoint wsn reads: $WSN_MAX_CHECKPOINT_BYTES, else MAX_CHECKPOINT_BYTES."""
    return env_limit("WSN_MAX_CHECKPOINT_BYTES", MAX_CHECKPOINT_BYTES, "bytes", UsageError)


def is_checkpoint(path: Path) -> bool:
    """Whether `path` starts like a wsn checkpoint of either version (to refuse overwriting one)."""
    prefix = file_prefix(path, 4096)
    return (
        prefix[:4] == ZIP_MAGIC
        and b"data.pkl" in prefix
        or (container.looks_like_container(prefix) and b'"wsn-checkpoint"' in prefix)
    )


def read_checkpoint_file(path: Path, require_signature: bool = True) -> CheckpointFile:
    """Read and check `path`; any failure is a one-line CheckpointError naming the file."""
    path = Path(path)
    limit = checkpoint_limit()
    raw = read_regular_file(path, limit, "checkpoint", CheckpointError, " (WSN_MAX_CHECKPOINT_BYTES)")
    return read_checkpoint_data(path, raw, require_signature)


def read_checkpoint_data(path: Path, raw: bytes, require_signature: bool = True) -> CheckpointFile:
    """read_checkpoint_bytes, with errors naming `path` (the bytes were read from it)."""
    try:
        return read_checkpoint_bytes(raw, require_signature)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_checkpoint_bytes(raw: bytes, require_signature: bool = True) -> CheckpointFile:
    if not raw:
        raise CheckpointError("empty file, not a wsn checkpoint")
    if raw[:4] == ZIP_MAGIC:
        return _read_v1(raw)
    if not container.looks_like_container(raw[:16]):
        raise CheckpointError("not a wsn checkpoint (neither a safetensors file nor a version-1 zip)")
    part = container.decode(raw, require_signature)
    meta = decode_meta(part.meta_json)
    arrays = dict(part.arrays)
    blob = arrays.pop(MASKS, None)
    if MASKS in part.tampered:
        raise CheckpointError("the masks tensor fails its checksum (file corrupt)")
    out = CheckpointFile(2, meta, arrays, tampered=part.tampered, signature=part.signature, size=len(raw))
    _check_layer_arrays(out)
    wsn_tasks = [r.task for r in meta.tasks] if meta.method == "wsn" else []
    if blob is None:
        if wsn_tasks:
            raise CheckpointError("the masks tensor is missing")
        return out
    if not wsn_tasks or blob.dtype != np.uint8 or blob.ndim != 1:
        raise CheckpointError("a masks tensor must be uint8 (bytes), and only where wsn tasks are learned")
    out.masks, out.mask_codec = _decode_masks(blob.tobytes(), meta, wsn_tasks)
    out.mask_bytes = int(blob.size)
    return out


def _check_layer_arrays(ckpt: CheckpointFile) -> None:
    """Every layer in meta.layers has float32 weight and score arrays of its shape, and no others."""
    layers = {layer.name: tuple(layer.shape) for layer in ckpt.meta.layers}
    if not layers:
        raise CheckpointError("meta.layers is empty")
    present = {name.split("/")[1] for name in ckpt.arrays if name.startswith("layer/") and name.count("/") == 2}
    if present != set(layers):
        extra, lacking = sorted(present - set(layers)), sorted(set(layers) - present)
        raise CheckpointError(f"layer tensors do not match meta.layers (extra {extra[:3]}, missing {lacking[:3]})")
    for name, shape in layers.items():
        for kind in ("weight", "scores"):
            arr = ckpt.arrays.get(f"layer/{name}/{kind}")
            if arr is None or arr.dtype != np.float32 or tuple(arr.shape) != shape:
                got = "missing" if arr is None else f"{arr.dtype} {tuple(arr.shape)}"
                raise CheckpointError(f"tensor 'layer/{name}/{kind}' is {got}, expected float32 {shape}")


def _decode_masks(blob: bytes, meta: CheckpointMeta, tasks: list[int]) -> tuple[dict[int, dict[str, np.ndarray]], str]:
    """The .wsnm file inside a checkpoint, decoded with its size bounded by what meta declares."""
    expected_bits = sum(math.prod(layer.shape) for layer in meta.layers) * len(tasks)
    try:
        packed = formats.unpack(
            blob, max_bits=expected_bits, limit_hint="more than the records and meta.layers declare"
        )
    except formats.FormatError as exc:
        raise CheckpointError(
            f"the masks tensor is not a valid packed-mask file for these {len(tasks)} task records ({exc})"
        ) from None
    if list(packed.task_ids) != tasks:
        raise CheckpointError(f"the masks tensor holds tasks {list(packed.task_ids)[:10]}, the records {tasks[:10]}")
    declared = [(layer.name, tuple(layer.shape)) for layer in meta.layers]
    if [(layer.name, tuple(layer.shape)) for layer in packed.layers] != declared:
        raise CheckpointError("the masks tensor's layers differ from meta.layers")
    masks: dict[int, dict[str, np.ndarray]] = {t: {} for t in tasks}
    for layer in packed.layers:
        for t, mask in zip(tasks, layer.masks):
            masks[t][layer.name] = np.asarray(mask, bool)
    return masks, packed.codec


def _read_v1(raw: bytes) -> CheckpointFile:
    """A version-1 file, in version-2 terms (meta.layers filled from the network it describes)."""
    from wsncli.engine.store import legacy_v1
    from wsncli.engine.store.schema import LayerSpec

    meta, arrays, tampered = legacy_v1.read_v1(raw)
    meta.layers = [LayerSpec(name, list(shape)) for name, shape in _v1_layer_shapes(meta).items()]
    out = CheckpointFile(
        1,
        meta,
        {k: v for k, v in arrays.items() if not k.startswith("mask/")},
        tampered=tampered,
        size=len(raw),
        mask_codec="packbits",
    )
    _check_layer_arrays(out)
    for record in meta.tasks if meta.method == "wsn" else []:
        out.masks[record.task] = {}
        for layer in meta.layers:
            n = math.prod(layer.shape)
            name = f"mask/{record.task}/{layer.name}"
            packed = arrays.get(name)
            if packed is None or packed.dtype != np.uint8 or packed.shape != ((n + 7) // 8,):
                got = "missing" if packed is None else f"{packed.dtype} {tuple(packed.shape)}"
                raise CheckpointError(f"tensor {name!r} is {got}, expected uint8 ({(n + 7) // 8},)")
            out.masks[record.task][layer.name] = np.unpackbits(packed, count=n).astype(bool)
            out.mask_bytes += packed.size
    return out


def _v1_layer_shapes(meta: CheckpointMeta) -> dict[str, tuple[int, ...]]:
    import torch

    from wsncli.engine.nn.models import build_model
    from wsncli.engine.store.schema import to_model_config

    try:
        with torch.device("meta"):
            model = build_model(to_model_config(meta.model))
    except UsageError as exc:
        raise CheckpointError(str(exc)) from None
    return {name: tuple(layer.weight.shape) for name, layer in model.subnet_layers().items()}
