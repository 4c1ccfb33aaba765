"""Reading a checkpoint file of any version into numpy arrays and typed metadata (no torch for
versions 2 and 3, so `wsn inspect` starts fast): size limit, container checks, masks decoded and checked
against the metadata. Building the network from it is store.checkpoint's job."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import formats
from wsncli.engine.limits import env_limit
from wsncli.engine.store import container
from wsncli.engine.store.legacy_v1 import ZIP_MAGIC
from wsncli.engine.store.paths import check_unchanged_size, open_regular_file, read_at
from wsncli.engine.store.records import damaged_records
from wsncli.engine.store.schema import CheckpointMeta, decode_meta
from wsncli.errors import CheckpointError, DataError, UsageError

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
    mask_codec: str | None = None  # versions 2 and 3: the codec of the masks tensor (version 1: packbits)
    mask_bytes: int = 0
    damaged_records: list[int] = field(default_factory=list)  # tasks whose record digest fails


def checkpoint_limit() -> int:
    """The largest checkpoint wsn reads: $WSN_MAX_CHECKPOINT_BYTES, else MAX_CHECKPOINT_BYTES."""
    return env_limit("WSN_MAX_CHECKPOINT_BYTES", MAX_CHECKPOINT_BYTES, "bytes", UsageError)


def read_checkpoint_file(path: Path, signatures: str = container.REQUIRE) -> CheckpointFile:
    """Read and check `path`; any failure is a one-line CheckpointError naming the file.

    Versions 2 and 3 are read header first: the header, the metadata and the layers and masks it
    declares are checked before the tensors are read, once, into one buffer of their declared size.
    `signatures`: container.REQUIRE (with $WSN_CHECKPOINT_KEY set, an unsigned or wrongly signed file
    is refused) or container.ADOPT (reported in `signature`; train-task --adopt-unsigned)."""
    path = Path(path)
    with open_regular_file(path, checkpoint_limit(), "checkpoint", CheckpointError, _LIMIT_HINT) as (fd, size):
        head = bytes(read_at(fd, 0, min(size, 16), path, CheckpointError))
        if head[:4] == ZIP_MAGIC:  # version 1, a torch.save ZIP: read whole
            raw = read_at(fd, 0, size, path, CheckpointError)
            check_unchanged_size(fd, size, path, CheckpointError)
            return read_checkpoint_data(path, raw, signatures)
        if not container.looks_like_container(head):
            return read_checkpoint_data(path, head, signatures)  # refused on its first bytes
        found = container.decode_fd(fd, size, path, container.CHECKPOINT, signatures, _check_header)
    try:
        return _from_decoded(found)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_checkpoint_data(path: Path, raw: bytes, signatures: str = container.REQUIRE) -> CheckpointFile:
    """read_checkpoint_bytes, with errors naming `path` (the bytes were read from it)."""
    try:
        return read_checkpoint_bytes(raw, signatures)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_checkpoint_bytes(raw: bytes, signatures: str = container.REQUIRE) -> CheckpointFile:
    if not raw:
        raise CheckpointError("empty file, not a wsn checkpoint")
    if raw[:4] == ZIP_MAGIC:
        out = _read_v1(raw)
        if container.signing_key() is not None and signatures == container.REQUIRE:
            raise CheckpointError(
                f"is a version-1 checkpoint, never signed, but {container.KEY_ENV} is set: refusing an unsigned file"
                f"{container.CHECKPOINT.unsigned_hint}"
            )
        return out
    if not container.looks_like_container(bytes(raw[:16])):
        raise CheckpointError("not a wsn checkpoint (neither a safetensors file nor a version-1 zip)")
    return _from_decoded(container.decode_bytes(raw, container.CHECKPOINT, signatures, _check_header))


_LIMIT_HINT = " (WSN_MAX_CHECKPOINT_BYTES)"


def _check_header(header: container.Header) -> CheckpointMeta:
    """Before any tensor is read: the metadata's checksum and schema, and the layer and masks entries
    it declares (the masks no larger than a packbits file of its layers and tasks)."""
    meta_json = header.fields["meta"].encode()
    if hashlib.sha256(meta_json).hexdigest() != header.fields["meta_sha256"]:
        raise CheckpointError("metadata fails its checksum (file corrupt)")
    meta = decode_meta(meta_json, header.version)
    _check_layers({name: (container.DTYPES[e.dtype], e.shape) for name, e in header.entries.items()}, meta)
    masks = header.entries.get(MASKS)
    wsn_tasks = len(meta.tasks) if meta.method == "wsn" else 0
    if masks is not None:
        if not wsn_tasks or masks.dtype != "U8" or len(masks.shape) != 1:
            raise CheckpointError("a masks tensor must be uint8 (bytes), and only where wsn tasks are learned")
        most = masks_bound(meta, wsn_tasks)
        if masks.shape[0] > most:
            raise CheckpointError(
                f"the masks tensor has {masks.shape[0]} bytes, more than the {most} a packed-mask file of "
                f"{len(meta.layers)} layers and {wsn_tasks} tasks can take"
            )
    return meta


def masks_bound(meta: CheckpointMeta, tasks: int) -> int:
    """The most bytes the masks of `tasks` tasks take: a packbits .wsnm file (every codec wsn picks is
    no larger) of meta.layers, with room for its header."""
    bits = sum(math.prod(layer.shape) for layer in meta.layers) * tasks
    return bits // 8 + len(meta.layers) * (tasks * 64 + 1024) + tasks * 32 + (64 << 10)


def _from_decoded(found: container.Decoded) -> CheckpointFile:
    meta: CheckpointMeta = found.checked
    arrays = dict(found.arrays)
    blob = arrays.pop(MASKS, None)
    if MASKS in found.tampered:
        raise CheckpointError("the masks tensor fails its checksum (file corrupt)")
    out = CheckpointFile(
        found.header.version,
        meta,
        arrays,
        tampered=found.tampered,
        signature=found.header.signature,
        size=found.size,
    )
    out.damaged_records = damaged_records(meta)
    wsn_tasks = [r.task for r in meta.tasks] if meta.method == "wsn" else []
    if blob is None:
        if wsn_tasks:
            raise CheckpointError("the masks tensor is missing")
        return out
    out.masks, out.mask_codec = _decode_masks(blob.tobytes(), meta, wsn_tasks)
    out.mask_bytes = int(blob.size)
    return out


def _check_layers(present: dict[str, tuple[np.dtype, tuple[int, ...]]], meta: CheckpointMeta) -> None:
    """Every layer in meta.layers has float32 weight and score tensors of its shape, and no others."""
    layers = {layer.name: tuple(layer.shape) for layer in meta.layers}
    if not layers:
        raise CheckpointError("meta.layers is empty")
    named = {name.split("/")[1] for name in present if name.startswith("layer/") and name.count("/") == 2}
    if named != set(layers):
        extra, lacking = sorted(named - set(layers)), sorted(set(layers) - named)
        raise CheckpointError(f"layer tensors do not match meta.layers (extra {extra[:3]}, missing {lacking[:3]})")
    for name, shape in layers.items():
        for kind in ("weight", "scores"):
            dtype, got_shape = present.get(f"layer/{name}/{kind}", (None, None))
            if dtype is None or dtype != np.float32 or tuple(got_shape) != shape:
                got = "missing" if dtype is None else f"{np.dtype(dtype)} {tuple(got_shape)}"
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
    """A version-1 file, in current terms (meta.layers filled from the network it describes)."""
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
    _check_layers({name: (arr.dtype, arr.shape) for name, arr in out.arrays.items()}, meta)
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
    except (UsageError, DataError) as exc:
        raise CheckpointError(str(exc)) from None
    return {name: tuple(layer.weight.shape) for name, layer in model.subnet_layers().items()}
