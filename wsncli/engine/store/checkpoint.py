"""The wsn checkpoint: a versioned, checksummed dict of tensors and plain data (docs/CHECKPOINT.md).

Loaded with `torch.load(weights_only=True)` (no code runs), written atomically (temporary file in
the same folder, fsync, rename), masks stored as packed bits (1 bit per weight per task).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.nn.models import ModelConfig, WSNNet, build_model
from wsncli.engine.store.atomic import atomic_write
from wsncli.engine.store.schema import check_meta, check_plain, check_tensors
from wsncli.errors import CheckpointError, UsageError

FORMAT_NAME = "wsn-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 16 * 2**30  # default of $WSN_MAX_CHECKPOINT_BYTES
_ZIP_MAGIC = b"PK\x03\x04"


def checkpoint_limit() -> int:
    """The largest checkpoint wsn reads: $WSN_MAX_CHECKPOINT_BYTES, else MAX_CHECKPOINT_BYTES."""
    text = os.environ.get("WSN_MAX_CHECKPOINT_BYTES", "").strip()
    if not text:
        return MAX_CHECKPOINT_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"WSN_MAX_CHECKPOINT_BYTES must be a positive number of bytes, got {text[:40]!r}")
    return value


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network, every task's mask, and the metadata (`meta`)."""

    meta: dict
    model: WSNNet
    masks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # task -> layer -> bool
    tampered: list[str] = field(default_factory=list)  # tensors whose checksum failed on load

    @property
    def tasks(self) -> list[dict]:
        """Task records in learning order."""
        return self.meta["tasks"]

    def task_record(self, task: int) -> dict:
        for record in self.tasks:
            if record["task"] == task:
                return record
        raise KeyError(task)

    def learned(self) -> list[int]:
        return [r["task"] for r in self.tasks]

    def used_weights(self, tasks: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Union of the masks of `tasks` (default: all learned), per layer (bool, weight shape)."""
        layers = self.model.subnet_layers()
        union = {name: torch.zeros_like(layer.weight, dtype=torch.bool) for name, layer in layers.items()}
        for task in self.learned() if tasks is None else tasks:
            for name in union:
                union[name] |= self.masks[task][name]
        return union


def new_meta(benchmark: str, n_tasks: int | None, config: ModelConfig, seed: int, method: str, data_root: str | None) -> dict:
    """Metadata of a fresh checkpoint (plain JSON-able data)."""
    from wsncli import __version__

    return {
        "benchmark": benchmark,
        "n_tasks": n_tasks,
        "model": config.to_dict(),
        "seed": seed,
        "method": method,
        "data_root": data_root,
        "wsn_version": __version__,
        "tasks": [],
    }


# -- bits ------------------------------------------------------------------------------------
def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool (any shape) -> uint8 (ceil(n/8),): numpy packbits, big bit order, flat C order."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy().reshape(-1)))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape))
    bits = np.unpackbits(packed.numpy(), count=n).astype(bool)
    return torch.from_numpy(bits).reshape(shape)


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 over dtype, shape and the little-endian bytes of a tensor."""
    arr = t.detach().cpu().contiguous().numpy()
    h = hashlib.sha256(f"{arr.dtype.str}{list(arr.shape)}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


# -- save ------------------------------------------------------------------------------------
def checkpoint_tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in ckpt.model.subnet_layers().items():
        tensors[f"layer/{name}/weight"] = layer.weight.detach().cpu()
        tensors[f"layer/{name}/scores"] = layer.scores.detach().cpu()
    for task_key, head in ckpt.model.heads.items():
        for key, value in head.state_dict().items():
            tensors[f"head/{task_key}/{key}"] = value.detach().cpu()
    for task_key, norms in ckpt.model.task_norms.items():
        for key, value in norms.state_dict().items():
            tensors[f"norm/{task_key}/{key}"] = value.detach().cpu()
    for task, layer_masks in ckpt.masks.items():
        for name, mask in layer_masks.items():
            tensors[f"mask/{task}/{name}"] = pack_mask(mask)
    return {k: v.contiguous().clone() for k, v in tensors.items()}


def to_payload(ckpt: Checkpoint) -> dict:
    """The dict that torch.save writes."""
    tensors = checkpoint_tensors(ckpt)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "meta": ckpt.meta,
        "tensors": tensors,
        "checksums": {
            "meta": hashlib.sha256(canonical_json(ckpt.meta)).hexdigest(),
            "tensors": {k: tensor_digest(v) for k, v in tensors.items()},
        },
    }


def save_checkpoint(ckpt: Checkpoint, path: Path) -> int:
    """Write atomically (see wsncli.engine.store.atomic); returns the file's size in bytes.

    Serialised in memory first: torch.save reports a failed write (full disk) as a RuntimeError,
    a plain file write reports it as the OSError atomic_write turns into one line.
    """
    buffer = io.BytesIO()
    torch.save(to_payload(ckpt), buffer)
    data = buffer.getbuffer()
    return atomic_write(Path(path), lambda f: f.write(data), CheckpointError)


# -- load ------------------------------------------------------------------------------------
def load_checkpoint(path: Path, device: torch.device | None = None) -> Checkpoint:
    """Read, verify and rebuild a checkpoint; any failure is a one-line CheckpointError naming the file.

    The file is untrusted: it is read once into memory (after a size check), checked as a ZIP,
    unpickled with weights_only=True (no code runs), and every field is validated before use.
    """
    path = Path(path)
    raw = _read_bytes(path)
    payload = _unpickle(path, raw)
    try:
        meta = _check_envelope(payload)
        check_tensors(payload.get("tensors"), payload.get("checksums"), len(raw))
        check_meta(meta)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    del raw
    tensors, sums = payload["tensors"], payload["checksums"]["tensors"]
    tampered = [name for name, digest in sums.items() if name in tensors and tensor_digest(tensors[name]) != digest]
    missing_sums = sorted(set(tensors) - set(sums))
    if missing_sums:
        raise CheckpointError(f"{path}: tensor {missing_sums[0][:80]!r} has no checksum")
    bad_masks = [n for n in tampered if n.startswith("mask/")]
    if bad_masks:
        raise CheckpointError(f"{path}: mask tensor {bad_masks[0][:80]!r} fails its checksum (file corrupt)")
    try:
        ckpt = _rebuild(meta, tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: malformed checkpoint: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - validated above; a gap here must still be one line
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: malformed checkpoint: {first}") from None
    ckpt.tampered = tampered
    if device is not None:
        ckpt.model.to(device)
        ckpt.masks = {t: {n: m.to(device) for n, m in lm.items()} for t, lm in ckpt.masks.items()}
    return ckpt


def _read_bytes(path: Path) -> bytes:
    """The whole file, read once (no second open that could see another file), size checked first."""
    limit = checkpoint_limit()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{path}: not a regular file")
            if st.st_size > limit:
                raise CheckpointError(f"{path}: {st.st_size} bytes is over the {limit}-byte checkpoint limit (WSN_MAX_CHECKPOINT_BYTES)")
            raw = f.read(min(st.st_size, limit) + 1)  # grown since fstat: caught below
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > limit:
        raise CheckpointError(f"{path}: over the {limit}-byte checkpoint limit (WSN_MAX_CHECKPOINT_BYTES)")
    if not raw:
        raise CheckpointError(f"{path}: empty file, not a wsn checkpoint")
    if raw[:4] != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a wsn checkpoint (no torch zip header)")
    return raw


def _unpickle(path: Path, raw: bytes) -> dict:
    """ZIP structure checks, then torch.load(weights_only=True) from memory."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:  # declared sizes first: no zip bombs
            infos = zf.infolist()
            if any(info.compress_type != zipfile.ZIP_STORED for info in infos):
                raise CheckpointError(f"{path}: compressed ZIP entries (torch.save never writes them)")
            declared = sum(info.file_size for info in infos)
            if declared > len(raw):
                raise CheckpointError(f"{path}: ZIP entries declare {declared} bytes, more than the file's {len(raw)}")
            bad = zf.testzip()
        if bad is not None:
            raise CheckpointError(f"{path}: record {bad[:80]!r} fails its CRC (file corrupt)")
        with warnings.catch_warnings():  # hostile pickles make torch warn; the error line says it all
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/zip raise many types for hostile bytes; all mean the same
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a wsn checkpoint (top level is {type(payload).__name__})")
    return payload


def _check_envelope(payload: dict) -> dict:
    fmt = payload.get("format")
    if not isinstance(fmt, str) or fmt != FORMAT_NAME:
        raise CheckpointError(f"not a wsn checkpoint (format {_short(fmt)})")
    version = payload.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {_short(version)} is not supported (this wsn reads version {FORMAT_VERSION})")
    meta = payload.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError("malformed checkpoint (meta missing)")
    check_plain(meta)  # before hashing: json.dumps would recurse, loop or expand shared lists
    sums = payload.get("checksums")
    if not isinstance(sums, dict) or hashlib.sha256(canonical_json(meta)).hexdigest() != sums.get("meta"):
        raise CheckpointError("metadata fails its checksum (file corrupt)")
    return meta


def _short(value) -> str:
    text = repr(value) if isinstance(value, (str, int, float, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _expect(tensors: dict, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if name not in tensors:
        raise CheckpointError(f"tensor {name!r} missing")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise CheckpointError(f"tensor {name!r} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
    return t


def _rebuild(meta: dict, tensors: dict) -> Checkpoint:
    """The network and masks from validated meta; every tensor's presence, dtype and shape is
    checked before memory for it is allocated (shapes come from a network built on the meta device)."""
    try:
        config = ModelConfig.from_dict(meta["model"])
        with torch.device("meta"):
            shapes = build_model(config)
        for name, layer in shapes.subnet_layers().items():
            for kind in ("weight", "scores"):
                _expect(tensors, f"layer/{name}/{kind}", tuple(layer.weight.shape), torch.float32)
        model = build_model(config)
    except UsageError as exc:
        raise CheckpointError(str(exc)) from None
    masks: dict[int, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, layer in model.subnet_layers().items():
            layer.weight.copy_(tensors[f"layer/{name}/weight"])
            layer.scores.copy_(tensors[f"layer/{name}/scores"])
        for record in meta["tasks"]:
            task, n_classes = record["task"], record["n_classes"]
            _expect(tensors, f"head/{task}/weight", (n_classes, model.feature_dim), torch.float32)  # before allocating it
            model.add_task(task, n_classes)
            _load_module(model.heads[str(task)], tensors, f"head/{task}/")
            if str(task) in model.task_norms:
                _load_module(model.task_norms[str(task)], tensors, f"norm/{task}/")
            if record["method"] == "wsn":
                masks[task] = {
                    name: unpack_mask(_expect(tensors, f"mask/{task}/{name}", ((layer.weight.numel() + 7) // 8,), torch.uint8), tuple(layer.weight.shape))
                    for name, layer in model.subnet_layers().items()
                }
    model.eval()
    return Checkpoint(meta=meta, model=model, masks=masks)


def _load_module(module: torch.nn.Module, tensors: dict, prefix: str) -> None:
    state = {}
    for key, value in module.state_dict().items():
        state[key] = _expect(tensors, prefix + key, tuple(value.shape), value.dtype)
    module.load_state_dict(state)
