"""The wsn checkpoint in memory (network, masks, transforms, recorded outputs) and on disk.

Version 3 (written; version 2 read) is a safetensors file (store.container, docs/CHECKPOINT.md); version 1 (wsn
0.1) is still read. Saving serialises in memory, reads the bytes back through the same code that
loads checkpoints (so a file that would not load is never written), then replaces the file
atomically (store.paths).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import formats
from wsncli.engine.data.preprocess import Preprocess
from wsncli.engine.limits import MAX_WEIGHTS
from wsncli.engine.nn.models import WSNNet, build_model
from wsncli.engine.nn.user import CUSTOM_ARCH, ArchModule
from wsncli.engine.store import container
from wsncli.engine.store.paths import OutputTarget, write_output
from wsncli.engine.store.reader import MASKS, CheckpointFile, read_checkpoint_bytes, read_checkpoint_file
from wsncli.engine.store.records import stamp_records
from wsncli.engine.store.schema import (
    CheckpointMeta,
    LayerSpec,
    PreprocessSpec,
    TaskRecord,
    encode_meta,
    to_model_config,
)
from wsncli.errors import CheckpointError, DataError, TaskError, UsageError

FORMAT_NAME, FORMAT_VERSION = container.FORMAT_NAME, container.FORMAT_VERSION


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network, every task's mask, transform and recorded test outputs."""

    meta: CheckpointMeta
    model: WSNNet
    masks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # task -> layer -> bool
    preps: dict[int, Preprocess] = field(default_factory=dict)  # records of versions 2 and 3
    predictions: dict[int, np.ndarray] = field(default_factory=dict)  # test predictions at learning (v2, v3)
    tampered: list[str] = field(default_factory=list)  # what fails a check: "tensor 'x' fails its checksum", ...
    version: int = FORMAT_VERSION
    signature: str = "unsigned"
    damaged_records: list[int] = field(default_factory=list)  # tasks whose record digest fails (section 6)
    file_bytes: int = 0
    mask_codec: str | None = None
    mask_bytes: int = 0

    @property
    def tasks(self) -> list[TaskRecord]:
        """Task records in learning order."""
        return self.meta.tasks

    def task_record(self, task: int) -> TaskRecord:
        for record in self.tasks:
            if record.task == task:
                return record
        raise KeyError(task)

    def learned(self) -> list[int]:
        return [r.task for r in self.tasks]

    def require_intact_record(self, task: int) -> None:
        """A task whose record digest fails may map its outputs to other labels: refuse to use it."""
        if task in self.damaged_records:
            raise CheckpointError(
                f"task {task}'s record fails its record digest (its labels, transform or digests were edited "
                "outside wsn); refusing to use it"
            )

    def task(self, task: int) -> TaskFunction:
        """An nn.Module computing exactly `task`'s function: its masks (or the dense network of a
        finetune checkpoint), head, BatchNorm and biases; what `wsn predict` and `wsn export` use.
        Refuses a task not learned, and one whose record digest fails."""
        if isinstance(task, bool) or not isinstance(task, int):
            raise TaskError(f"a task is an integer, got {task!r}")
        if task not in self.learned():
            raise TaskError(f"task {task} is not learned; learned: {', '.join(map(str, self.learned())) or 'none'}")
        self.require_intact_record(task)
        return TaskFunction(self.model, task, self.masks.get(task))

    def used_weights(self, tasks: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Union of the masks of `tasks` (default: all learned), per layer (bool, weight shape)."""
        layers = self.model.subnet_layers()
        union = {name: torch.zeros_like(layer.weight, dtype=torch.bool) for name, layer in layers.items()}
        for task in self.learned() if tasks is None else tasks:
            for name in union:
                union[name] |= self.masks[task][name].to(union[name].device)
        return union


class TaskFunction(torch.nn.Module):
    """One task's function of a checkpoint's network: network inputs (B, *input_shape) -> logits
    (B, n_classes). Several may share one network: each call puts the network in its task's mode
    (the masked weights are cached until another task's function runs)."""

    _tokens = itertools.count(1)

    def __init__(self, model: WSNNet, task: int, masks: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        self.model, self.task, self.masks = model, task, masks
        self._token = next(TaskFunction._tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.mode_owner != self._token:
            if self.masks is None:
                self.model.dense()
            else:
                self.model.use_masks(self.masks)
            self.model.mode_owner = self._token
        self.model.eval()
        return self.model(x, self.task)  # (B, n_classes)


def open_checkpoint(
    path: str | Path, arch: ArchModule | Callable | None = None, signatures: str = container.REQUIRE
) -> Checkpoint:
    """Load a checkpoint file (format 1, 2 or 3). A network from an arch module needs `arch`: the same
    trunk factory (a callable taking the input shape), which the file's fingerprint must match; the
    file itself never makes anything be imported."""
    if arch is not None and not isinstance(arch, ArchModule):
        arch = ArchModule(getattr(arch, "__qualname__", "factory"), arch)
    return load_checkpoint(Path(path), signatures, arch)


def count_weights(config) -> int:
    """Masked weights of the network `config` describes, counted without allocating it."""
    with torch.device("meta"):
        model = build_model(config)
    return sum(layer.weight.numel() for layer in model.subnet_layers().values())


def check_model_size(config) -> None:
    n = count_weights(config)
    if n > MAX_WEIGHTS:
        raise CheckpointError(f"the network has {n} masked weights, over the limit of {MAX_WEIGHTS}")


def load_checkpoint(path: Path, signatures: str = container.REQUIRE, arch: ArchModule | None = None) -> Checkpoint:
    """Read, verify and rebuild a checkpoint; any failure is a one-line CheckpointError naming the file.
    `signatures`: see store.reader.read_checkpoint_file; `arch`: the trunk factory of a network from an
    arch module (refused for a built-in network)."""
    path = Path(path)
    found = read_checkpoint_file(path, signatures)
    try:
        return build_checkpoint(found, arch)
    except (CheckpointError, UsageError) as exc:
        raise type(exc)(f"{path}: {exc}") from None


def _with_arch(config, arch: ArchModule | None):
    """config with the caller's trunk factory; refuses a missing one, and one for a built-in network."""
    if config.arch != CUSTOM_ARCH:
        if arch is not None:
            raise UsageError(f"the network is the built-in {config.arch!r}; --arch-module does not apply")
        return config
    if arch is None:
        raise UsageError(
            f"the network was built by --arch-module {config.module}; pass --arch-module again "
            "(a file never makes wsn import code)"
        )
    return replace(config, factory=arch.factory)


@torch.random.fork_rng(devices=[])  # building draws initial values, all overwritten: the caller's generator is kept
def build_checkpoint(found: CheckpointFile, arch: ArchModule | None = None) -> Checkpoint:
    """The torch network and masks from a checked file; every tensor's dtype and shape is checked
    against a network built on the meta device before the real one is allocated."""
    meta = found.meta
    config = _with_arch(to_model_config(meta.model), arch)
    if config.arch == CUSTOM_ARCH:
        with torch.device("meta"):
            probe = build_model(config)  # the factory's own errors are one line (UsageError)
        if probe.fingerprint != meta.model.fingerprint:
            raise UsageError(
                f"--arch-module {arch.name} builds a different network than the one the checkpoint holds "
                f"(made by {config.module}; layer names, kinds or shapes differ)"
            )
    try:
        check_model_size(config)
        with torch.device("meta"):  # shapes first: a small file must not make us allocate a large network
            shapes = [(n, tuple(layer.weight.shape)) for n, layer in build_model(config).subnet_layers().items()]
        declared = [(layer.name, tuple(layer.shape)) for layer in meta.layers]
        if declared != shapes:
            raise CheckpointError("malformed checkpoint: meta.layers does not match the network meta.model describes")
        model = build_model(config)
    except (UsageError, DataError) as exc:  # a network meta.model cannot describe
        raise CheckpointError(f"malformed checkpoint: {exc}") from None
    layers = model.subnet_layers()
    arrays, used = found.arrays, set()

    def take(name: str, shape: tuple[int, ...], dtypes: tuple) -> np.ndarray:
        arr = arrays.get(name)
        stored = tuple(shape) or (1,)  # a scalar is stored as one element (safetensors' numpy API has no 0-d)
        if arr is None or arr.dtype not in dtypes or tuple(arr.shape) != stored:
            got = "missing" if arr is None else f"{arr.dtype} {tuple(arr.shape)}"
            raise CheckpointError(
                f"malformed checkpoint: tensor {name!r} is {got}, expected {dtypes[0].__name__} {stored}"
            )
        used.add(name)
        return arr.reshape(shape)

    ckpt = Checkpoint(
        meta,
        model,
        version=found.version,
        signature=found.signature,
        damaged_records=list(found.damaged_records),
        file_bytes=found.size,
        mask_codec=found.mask_codec,
        mask_bytes=found.mask_bytes,
    )
    with torch.no_grad():
        for name, layer in layers.items():
            for kind in ("weight", "scores"):
                arr = take(f"layer/{name}/{kind}", tuple(layer.weight.shape), (np.float32,))
                getattr(layer, kind).copy_(torch.from_numpy(arr if arr.flags.writeable else arr.copy()))
        for record in meta.tasks:
            t = record.task
            take(f"head/{t}/weight", (record.n_classes, model.feature_dim), (np.float32,))  # before allocating it
            model.add_task(t, record.n_classes)
            _load_state(model.heads[str(t)], f"head/{t}/", take)
            if str(t) in model.task_norms:
                _load_state(model.task_norms[str(t)], f"norm/{t}/", take)
            if str(t) in model.task_biases:
                for name, bias in zip(layers, model.task_biases[str(t)]):
                    arr = take(f"bias/{t}/{name}", tuple(bias.shape), (np.float32,))
                    bias.copy_(torch.from_numpy(arr if arr.flags.writeable else arr.copy()))
            if record.preprocess is not None:
                ckpt.preps[t] = _read_prep(record.preprocess, t, take, model.config.input_shape)
                pred = take(f"pred/{t}", (record.n_test,), (np.uint8, np.int32))
                if pred.size and int(pred.max()) >= record.n_classes:
                    raise CheckpointError(
                        f"malformed checkpoint: recorded predictions of task {t} name a class beyond its "
                        f"{record.n_classes}"
                    )
                ckpt.predictions[t] = pred.astype(np.int64)
            if meta.method == "wsn":
                ckpt.masks[t] = {n: torch.from_numpy(found.masks[t][n]).reshape(layers[n].weight.shape) for n in layers}
    model.eval()
    model.needs_task_mode = meta.method == "wsn"  # the dense trunk is no task's function (set_task_mode first)
    orphans = sorted(set(arrays) - used)
    ckpt.tampered = [f"tensor {name!r} fails its checksum" for name in found.tampered]
    ckpt.tampered += [f"tensor {name!r} belongs to no task record (a record was removed?)" for name in orphans]
    ckpt.tampered += [
        f"task {t}: its record fails its record digest (what data it is measured on, its labels or its "
        "recorded digests were edited)"
        for t in found.damaged_records
    ]
    return ckpt


def _load_state(module: torch.nn.Module, prefix: str, take) -> None:
    state = {}
    for key, value in module.state_dict().items():
        dtype = np.int64 if value.dtype == torch.int64 else np.float32
        state[key] = torch.from_numpy(take(prefix + key, tuple(value.shape), (dtype,)).copy())
    module.load_state_dict(state)


def _read_prep(spec: PreprocessSpec, task: int, take, input_shape: tuple[int, ...]) -> Preprocess:
    if spec.padding:
        if len(input_shape) != 1 or spec.padding >= input_shape[0]:
            raise CheckpointError(
                f"malformed checkpoint: task {task}'s transform pads {spec.padding} features, which does not fit "
                f"inputs {input_shape}"
            )
        input_shape = (input_shape[0] - spec.padding,)  # the task's own inputs
    shape = tuple(spec.mean_shape)
    if len(shape) > len(input_shape) or any(d not in (1, s) for d, s in zip(shape[::-1], input_shape[::-1])):
        raise CheckpointError(
            f"malformed checkpoint: task {task}'s transform has shape {shape}, which does not fit inputs {input_shape}"
        )
    mean = take(f"prep/{task}/mean", shape, (np.float32,)).copy()
    std = take(f"prep/{task}/std", shape, (np.float32,)).copy()
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"malformed checkpoint: task {task}'s transform has non-finite values or std <= 0")
    perm = None
    if spec.permuted:
        n = math.prod(input_shape)
        perm = take(f"prep/{task}/permutation", (n,), (np.int32, np.int64)).astype(np.int64)
        if not np.array_equal(np.sort(perm), np.arange(n)):
            raise CheckpointError(f"malformed checkpoint: task {task}'s permutation is not a permutation of {n} inputs")
    return Preprocess(spec.scale, spec.divide, mean, std, perm, spec.standardized, spec.padding)


def prep_spec(prep: Preprocess) -> PreprocessSpec:
    return PreprocessSpec(
        prep.scale, prep.divide, prep.standardized, prep.permutation is not None, list(prep.mean.shape), prep.padding
    )


def task_input_shape(ckpt: Checkpoint, task: int) -> tuple[int, ...]:
    """The sample shape task `task` takes: the network's, less the zero features its transform appends."""
    shape = tuple(ckpt.meta.model.input_shape)
    prep = ckpt.preps.get(task)
    return (shape[0] - prep.padding,) if prep is not None and prep.padding else shape


# -- save ------------------------------------------------------------------------------------
def task_arrays(model: WSNNet, task: int, prep: Preprocess | None) -> dict[str, np.ndarray]:
    """Every tensor task `task` owns, named and shaped as stored (section 4; a 0-d tensor as [1]):
    its head, its BatchNorm statistics, its per-task biases and its transform. The recorded
    predictions are not included. A new per-task tensor belongs here: it is then stored, and in the
    task's subnetwork digest (version 3)."""
    arrays: dict[str, np.ndarray] = {}
    for k, v in model.heads[str(task)].state_dict().items():
        arrays[f"head/{task}/{k}"] = v.detach().cpu().numpy()
    if str(task) in model.task_norms:
        for k, v in model.task_norms[str(task)].state_dict().items():
            arrays[f"norm/{task}/{k}"] = v.detach().cpu().numpy()
    if str(task) in model.task_biases:
        for name, bias in zip(model.subnet_layers(), model.task_biases[str(task)]):
            arrays[f"bias/{task}/{name}"] = bias.detach().cpu().numpy()
    if prep is not None:
        arrays[f"prep/{task}/mean"], arrays[f"prep/{task}/std"] = prep.mean, prep.std
        if prep.permutation is not None:
            arrays[f"prep/{task}/permutation"] = prep.permutation.astype(np.int32)  # < 2^24 inputs: int32 is exact
    return {k: np.ascontiguousarray(v).reshape(v.shape or (1,)) for k, v in arrays.items()}


def checkpoint_arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    """Every tensor of the file (names in docs/CHECKPOINT.md section 4)."""
    arrays: dict[str, np.ndarray] = {}
    for name, layer in ckpt.model.subnet_layers().items():
        arrays[f"layer/{name}/weight"] = layer.weight.detach().cpu().numpy()
        arrays[f"layer/{name}/scores"] = layer.scores.detach().cpu().numpy()
    for key in ckpt.model.heads:
        arrays.update(task_arrays(ckpt.model, int(key), ckpt.preps.get(int(key))))
    for key in set(ckpt.model.task_norms) - set(ckpt.model.heads):  # statistics of a task without a head
        for k, v in ckpt.model.task_norms[key].state_dict().items():
            arrays[f"norm/{key}/{k}"] = v.detach().cpu().numpy()
    for t, pred in ckpt.predictions.items():
        n_classes = ckpt.task_record(t).n_classes
        arrays[f"pred/{t}"] = pred.astype(np.uint8 if n_classes <= 256 else np.int32)
    wsn_tasks = [t for t in ckpt.learned() if t in ckpt.masks]
    if wsn_tasks:
        arrays[MASKS] = np.frombuffer(pack_masks(ckpt, wsn_tasks, "auto"), np.uint8)
    return {k: np.ascontiguousarray(v).reshape(v.shape or (1,)) for k, v in arrays.items()}


def layer_masks(ckpt: Checkpoint, tasks: list[int]) -> list[formats.LayerMasks]:
    """Each layer's masks of `tasks` (flat bool numpy), in forward order."""
    return [
        formats.LayerMasks(
            name, tuple(layer.weight.shape), [ckpt.masks[t][name].cpu().numpy().reshape(-1) for t in tasks]
        )
        for name, layer in ckpt.model.subnet_layers().items()
    ]


def pack_masks(ckpt: Checkpoint, tasks: list[int], codec: str) -> bytes:
    """The masks of `tasks` as a .wsnm file; `auto`: the smallest codec."""
    layers = layer_masks(ckpt, tasks)
    return formats.pack(layers, tasks, codec=codec, meta={"benchmark": ckpt.meta.benchmark})


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    """The version-3 file's bytes, after refusing any non-finite parameter."""
    ckpt.meta.layers = [LayerSpec(n, list(layer.weight.shape)) for n, layer in ckpt.model.subnet_layers().items()]
    stamp_records(ckpt.meta)  # format 3: every record carries its record digest
    arrays = checkpoint_arrays(ckpt)
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CheckpointError(f"tensor {name!r} holds NaN or infinite values; refusing to save a broken checkpoint")
    return container.encode(encode_meta(ckpt.meta), arrays, container.signing_key())


def save_checkpoint(ckpt: Checkpoint, target: OutputTarget) -> int:
    """Write `ckpt` to `target` (planned with store.paths.plan_output); returns the file's size.

    The bytes are read back and rebuilt by the loader first, and the masks compared bit for bit,
    so a checkpoint that could not be loaded is never written."""
    raw = encode_checkpoint(ckpt)
    config = ckpt.model.config
    arch = ArchModule(config.module, config.factory) if config.factory is not None else None
    try:
        back = build_checkpoint(read_checkpoint_bytes(raw, container.ADOPT), arch)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{target.path}: the new checkpoint would not load back ({exc}); nothing was written"
        ) from None
    for t, layer_masks_ in ckpt.masks.items():
        for n, mask in layer_masks_.items():
            if not torch.equal(back.masks[t][n], mask.cpu()):
                raise CheckpointError(
                    f"{target.path}: mask of task {t}, layer {n!r} differs after packing; nothing was written"
                )
    return write_output(target, raw, CheckpointError)
