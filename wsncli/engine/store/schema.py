"""The checkpoint's metadata as one typed schema (msgspec Structs), checked before any of it is used.

msgspec decodes JSON straight into these types and refuses anything else: wrong types, unknown
fields, numbers out of range or not finite (`1e400`, NaN), strings over their length; the typed tree
has a fixed depth, so nesting cannot explode. `check_meta` adds the rules that span fields. A
checksum only detects accidents (whoever writes a file can recompute it), so every value is checked
here whatever the checksums say. Failures raise CheckpointError with a short reason.
"""

from __future__ import annotations

import json
from typing import Annotated

import msgspec

from wsncli.engine.limits import (
    ARCHS,
    BENCHMARKS,
    CUSTOM_ARCH,
    MAX_BATCH_SIZE,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_HIDDEN,
    MAX_IMAGE_SIZE,
    MAX_INPUT_DIM,
    MAX_INPUT_DIMS,
    MAX_LABEL_CHARS,
    MAX_LR,
    MAX_SEED,
    MAX_TASK_ID,
    MAX_WIDTH,
    METHODS,
)
from wsncli.errors import CheckpointError

_INT64 = 2**63
_NAME = 256  # characters of a layer name or short string field

TaskId = Annotated[int, msgspec.Meta(ge=1, le=MAX_TASK_ID)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Capacity = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64 - 1)]
Seed = Annotated[int, msgspec.Meta(gt=-MAX_SEED, lt=MAX_SEED)]
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Short = Annotated[str, msgspec.Meta(max_length=_NAME)]
Label = int | Annotated[str, msgspec.Meta(max_length=MAX_LABEL_CHARS)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The shape-defining settings of the network (must match on every later task). Fields at their
    defaults are not written, so a file using no newer field reads in every earlier 0.2 reader."""

    arch: Short
    input_shape: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=MAX_INPUT_DIM)]],
        msgspec.Meta(min_length=1, max_length=MAX_INPUT_DIMS),
    ]
    hidden: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=MAX_HIDDEN)]], msgspec.Meta(max_length=64)] = []
    width: Annotated[int, msgspec.Meta(ge=1, le=MAX_WIDTH)] | None = None
    bias: bool = False  # per-task biases: tensors bias/<task>/<layer> (absent in files written before them)
    module: Short | None = None  # arch "custom": the arch module's name, PKG.MODULE:FACTORY (never imported)
    fingerprint: Digest | None = None  # arch "custom": sha256 of its layer names, kinds and shapes


class LayerSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A masked layer: its module name and weight shape (forward order in `CheckpointMeta.layers`)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=_NAME, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")]
    shape: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=1 << 31)]], msgspec.Meta(min_length=1, max_length=8)]


class PreprocessSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The task's input transform (data.preprocess); its arrays are the `prep/<t>/...` tensors.
    Fields at their defaults are not written (as ModelSpec)."""

    scale: Annotated[float, msgspec.Meta(gt=0.0, le=1e30)]
    divide: bool
    standardized: bool
    permuted: bool
    mean_shape: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=MAX_INPUT_DIM)]],
        msgspec.Meta(min_length=1, max_length=MAX_INPUT_DIMS),
    ]
    padding: Annotated[int, msgspec.Meta(ge=0, le=MAX_INPUT_DIM)] = 0  # zero features appended (fewer than the net's)


class TaskRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One learned task: its settings, what was measured when it was learned, and the digests."""

    task: TaskId
    order: Annotated[int, msgspec.Meta(ge=1, le=MAX_TASK_ID)]
    n_classes: Annotated[int, msgspec.Meta(ge=1, le=MAX_CLASSES)]
    classes: Annotated[list[Label], msgspec.Meta(max_length=MAX_CLASSES)]
    method: Short
    accuracy: Fraction
    n_test: Annotated[int, msgspec.Meta(ge=1, le=_INT64 - 1)]
    outputs_digest: Digest
    subnet_digest: Digest
    data_digest: Digest
    capacity: Capacity | None = None  # None for the dense fine-tune baseline
    kept_per_layer: dict[Short, Count] = {}
    mask_density: dict[Short, Fraction] = {}
    epochs: Annotated[int, msgspec.Meta(ge=1, le=MAX_EPOCHS)] | None = None
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_SIZE)] | None = None
    lr: Annotated[float, msgspec.Meta(gt=0.0, le=MAX_LR)] | None = None
    seed: Seed | None = None
    device: Short | None = None
    best_epoch: Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCHS)] | None = None
    val_accuracy: Fraction | None = None
    train_seconds: Seconds | None = None
    learned_at: Short | None = None
    preprocess: PreprocessSpec | None = None  # None: version-1 record (the benchmark's fixed transform)
    digest_version: Annotated[int, msgspec.Meta(ge=1, le=3)] = 3  # section 6 of docs/CHECKPOINT.md
    accuracy_row: Annotated[
        list[Fraction | None], msgspec.Meta(max_length=MAX_TASK_ID)
    ] = []  # earlier tasks, right after this one
    world_size: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 1
    input_dtype: (
        Annotated[
            str,
            msgspec.Meta(pattern=r"^(uint8|int8|int16|int32|int64|uint16|uint32|uint64|float16|float32|float64|bool)$"),
        ]
        | None
    ) = None
    record_digest: Digest | None = None  # format 3: sha256 of what decides the task's data and proof (store.records)


class CheckpointMeta(msgspec.Struct, forbid_unknown_fields=True):
    """Everything about a checkpoint that is not a tensor."""

    benchmark: Short
    model: ModelSpec
    seed: Seed
    method: Short
    tasks: Annotated[list[TaskRecord], msgspec.Meta(max_length=MAX_TASK_ID)] = []
    layers: Annotated[list[LayerSpec], msgspec.Meta(max_length=4096)] = []  # filled from the model for version 1
    n_tasks: Annotated[int, msgspec.Meta(ge=1, le=MAX_TASK_ID)] | None = None
    data_root: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    default_capacity: Capacity | None = None
    wsn_version: Short | None = None
    image_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_IMAGE_SIZE)] | None = None
    channels: Annotated[int, msgspec.Meta(ge=1, le=4)] | None = None


def decode_meta(raw: bytes, version: int = 3) -> CheckpointMeta:
    """JSON bytes of a format-`version` file -> CheckpointMeta, typed and checked (CheckpointError on any problem)."""
    try:
        meta = msgspec.json.decode(raw, type=CheckpointMeta, strict=True)
    except msgspec.ValidationError as exc:
        raise CheckpointError(f"metadata is invalid: {str(exc)[:200]}") from None
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"metadata is not valid JSON: {str(exc)[:200]}") from None
    _no_duplicate_keys(raw)
    check_meta(meta, version)
    return meta


def _no_duplicate_keys(raw: bytes) -> None:
    """msgspec keeps the last of repeated keys; another reader may keep the first: refuse them.
    Called after the typed decode succeeded, so the text's nesting is bounded by the schema."""

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            repeated = next(k for k in keys if keys.count(k) > 1)
            raise CheckpointError(f"metadata is invalid: duplicate key {repeated[:40]!r}")
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)


def convert_meta(obj: dict) -> CheckpointMeta:
    """Plain data (a version-1 payload) -> CheckpointMeta, typed and checked."""
    try:
        meta = msgspec.convert(obj, type=CheckpointMeta, strict=True)
    except msgspec.ValidationError as exc:
        raise CheckpointError(f"metadata is invalid: {str(exc)[:200]}") from None
    check_meta(meta, 1)
    return meta


def encode_meta(meta: CheckpointMeta) -> bytes:
    return msgspec.json.encode(meta)


def check_meta(meta: CheckpointMeta, version: int = 3) -> None:
    """The rules that span fields (docs/CHECKPOINT.md section 3) in a file of format `version`."""
    if meta.benchmark not in BENCHMARKS:
        raise CheckpointError(f"meta.benchmark must be one of {', '.join(BENCHMARKS)}, got {meta.benchmark[:60]!r}")
    if meta.model.arch not in (*ARCHS, CUSTOM_ARCH):
        raise CheckpointError(
            f"meta.model.arch must be one of {', '.join((*ARCHS, CUSTOM_ARCH))}, got {meta.model.arch[:60]!r}"
        )
    custom = meta.model.arch == CUSTOM_ARCH
    if custom != (meta.model.module is not None) or custom != (meta.model.fingerprint is not None):
        raise CheckpointError("meta.model.module and .fingerprint are given exactly when meta.model.arch is custom")
    if meta.method not in METHODS:
        raise CheckpointError(f"meta.method must be one of {', '.join(METHODS)}, got {meta.method[:60]!r}")
    names = [layer.name for layer in meta.layers]
    if len(set(names)) != len(names):
        raise CheckpointError("meta.layers names a layer twice")
    seen: set[int] = set()
    for i, record in enumerate(meta.tasks):
        at = f"meta.tasks[{i}]"
        check_record(record, at, meta.method, i + 1)
        _check_versions(record, at, version)
        if record.task in seen:
            raise CheckpointError(f"{at}.task {record.task} is learned twice")
        seen.add(record.task)


def check_record(record: TaskRecord, at: str, method: str, order: int) -> None:
    if record.order != order:
        raise CheckpointError(f"{at}.order is {record.order}, expected {order} (its place in the learning order)")
    if record.method != method:
        raise CheckpointError(f"{at}.method {record.method[:20]!r} differs from the checkpoint's {method!r}")
    if len(record.classes) != record.n_classes:
        raise CheckpointError(f"{at}.classes has {len(record.classes)} labels for {record.n_classes} classes")
    kinds = {type(c) for c in record.classes}
    if len(kinds) > 1:
        raise CheckpointError(f"{at}.classes mixes integers and strings")
    if kinds == {int} and any(not -_INT64 <= c < _INT64 for c in record.classes):
        raise CheckpointError(f"{at}.classes holds an integer out of the 64-bit range")
    if list(record.classes) != sorted(set(record.classes)):
        raise CheckpointError(f"{at}.classes must be sorted and distinct")
    if (method == "wsn") != (record.capacity is not None):
        raise CheckpointError(
            f"{at}.capacity must be {'a fraction in (0, 1]' if method == 'wsn' else 'null for finetune'}"
        )
    if len(record.accuracy_row) > order - 1:
        raise CheckpointError(
            f"{at}.accuracy_row has {len(record.accuracy_row)} entries; at most {order - 1} tasks came before"
        )
    if record.digest_version >= 2 and record.preprocess is None:
        raise CheckpointError(f"{at}.preprocess is missing")


def _check_versions(record: TaskRecord, at: str, version: int) -> None:
    """Format 3: every record carries its record digest; earlier formats: none, digest version <= 2."""
    if version >= 3 and record.record_digest is None:
        raise CheckpointError(f"{at}.record_digest is missing (every record of a format-3 file has one)")
    if version < 3 and (record.record_digest is not None or record.digest_version > 2):
        raise CheckpointError(f"{at}: digest version 3 and record digests need format version 3, not {version}")
    if version < 2 and record.digest_version != 1:
        raise CheckpointError(f"{at}.digest_version must be 1 in a version-1 file")


def to_model_config(spec: ModelSpec):
    """The network's ModelConfig (nn.models) from its stored spec."""
    from wsncli.engine.nn.models import ModelConfig

    extra = {"width": spec.width} if spec.width is not None else {}
    return ModelConfig(
        spec.arch, tuple(spec.input_shape), tuple(spec.hidden), bias=spec.bias, module=spec.module, **extra
    )


def from_model_config(config, fingerprint: str | None = None) -> ModelSpec:
    return ModelSpec(
        config.arch,
        list(config.input_shape),
        list(config.hidden),
        getattr(config, "width", None),
        config.bias,
        getattr(config, "module", None),
        fingerprint,
    )
