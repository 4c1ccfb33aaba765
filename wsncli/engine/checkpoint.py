"""The wsn checkpoint: a versioned, checksummed dict of tensors and plain data (docs/CHECKPOINT.md).

Loaded with `torch.load(weights_only=True)` (no code runs), written atomically (temporary file in
the same folder, fsync, rename), masks stored as packed bits (1 bit per weight per task).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.atomic import atomic_write
from wsncli.engine.models import ModelConfig, WSNNet, build_model
from wsncli.errors import CheckpointError, UsageError

FORMAT_NAME = "wsn-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = int(os.environ.get("WSN_MAX_CHECKPOINT_BYTES", 16 * 2**30))
_ZIP_MAGIC = b"PK\x03\x04"


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
    """Write atomically (see wsncli.engine.atomic); returns the file's size in bytes."""
    payload = to_payload(ckpt)
    return atomic_write(Path(path), lambda f: torch.save(payload, f), CheckpointError)


# -- load ------------------------------------------------------------------------------------
def load_checkpoint(path: Path, device: torch.device | None = None) -> Checkpoint:
    """Read, verify and rebuild a checkpoint; any failure is a one-line CheckpointError naming the file."""
    path = Path(path)
    payload = _read_payload(path)
    meta = _check_envelope(path, payload)
    tensors = payload["tensors"]
    tampered = [name for name, digest in payload["checksums"]["tensors"].items() if name in tensors and tensor_digest(tensors[name]) != digest]
    missing_sums = sorted(set(tensors) - set(payload["checksums"]["tensors"]))
    if missing_sums:
        raise CheckpointError(f"{path}: tensor {missing_sums[0]!r} has no checksum")
    bad_masks = [n for n in tampered if n.startswith("mask/")]
    if bad_masks:
        raise CheckpointError(f"{path}: mask tensor {bad_masks[0]!r} fails its checksum (file corrupt)")
    try:
        ckpt = _rebuild(meta, tensors)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    ckpt.tampered = tampered
    if device is not None:
        ckpt.model.to(device)
        ckpt.masks = {t: {n: m.to(device) for n, m in lm.items()} for t, lm in ckpt.masks.items()}
    return ckpt


def _read_payload(path: Path) -> dict:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is over the {MAX_CHECKPOINT_BYTES}-byte checkpoint limit (WSN_MAX_CHECKPOINT_BYTES)")
    if head != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a wsn checkpoint (no torch zip header)")
    try:
        with zipfile.ZipFile(path) as zf:  # cheap structural check: declared sizes fit the file
            declared = sum(info.file_size for info in zf.infolist())
            bad = zf.testzip()
        if declared > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: declared contents of {declared} bytes are over the checkpoint limit")
        if bad is not None:
            raise CheckpointError(f"{path}: record {bad!r} fails its CRC (file corrupt)")
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch/zip raise many types for hostile bytes; all mean the same
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable or corrupt checkpoint ({first[:200]})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a wsn checkpoint (top level is {type(payload).__name__})")
    return payload


def _check_envelope(path: Path, payload: dict) -> dict:
    if payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a wsn checkpoint (format {payload.get('format')!r})")
    version = payload.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not supported (this wsn reads version {FORMAT_VERSION})")
    meta, tensors, sums = payload.get("meta"), payload.get("tensors"), payload.get("checksums")
    if not isinstance(meta, dict) or not isinstance(tensors, dict) or not isinstance(sums, dict):
        raise CheckpointError(f"{path}: malformed checkpoint (meta, tensors or checksums missing)")
    if not isinstance(sums.get("tensors"), dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path}: malformed checkpoint (tensor table)")
    if hashlib.sha256(canonical_json(meta)).hexdigest() != sums.get("meta"):
        raise CheckpointError(f"{path}: metadata fails its checksum (file corrupt)")
    return meta


def _expect(tensors: dict, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if name not in tensors:
        raise KeyError(f"tensor {name!r} missing")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise ValueError(f"tensor {name!r} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
    return t


def _rebuild(meta: dict, tensors: dict) -> Checkpoint:
    try:
        config = ModelConfig.from_dict(meta["model"])
        model = build_model(config)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    masks: dict[int, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, layer in model.subnet_layers().items():
            layer.weight.copy_(_expect(tensors, f"layer/{name}/weight", tuple(layer.weight.shape), torch.float32))
            layer.scores.copy_(_expect(tensors, f"layer/{name}/scores", tuple(layer.scores.shape), torch.float32))
        for record in meta["tasks"]:
            task, n_classes = int(record["task"]), int(record["n_classes"])
            if n_classes < 1 or n_classes > 100_000:
                raise ValueError(f"task {task}: n_classes {n_classes} out of range")
            model.add_task(task, n_classes)
            _load_module(model.heads[str(task)], tensors, f"head/{task}/")
            if str(task) in model.task_norms:
                _load_module(model.task_norms[str(task)], tensors, f"norm/{task}/")
            if record.get("method", "wsn") == "wsn":
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
