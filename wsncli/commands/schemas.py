"""The `--json` documents, one typed schema per command (docs/JSON.md is generated from these).

Every document carries `"schema": "wsn.<command>/<version>"`. The same things have the same names
across commands: `checkpoint` is the checkpoint's path, `tasks` is always a list of task records,
`task_ids` a list of task ids. Numbers that cannot be measured are null, never NaN.
"""

from __future__ import annotations

from typing import Any

import msgspec

VERSION = 1


def schema_id(command: str) -> str:
    return f"wsn.{command}/{VERSION}"


class Doc(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    schema: str


# -- train-task -------------------------------------------------------------------------------------
class LearnedTask(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task: int
    order: int
    n_classes: int
    classes: list[int | str]
    method: str
    capacity: float | None
    accuracy: float
    val_accuracy: float | None
    accuracy_row: list[float | None]
    kept_per_layer: dict[str, int]
    epochs: int | None
    batch_size: int | None
    lr: float | None
    seed: int | None
    device: str | None
    best_epoch: int | None
    train_seconds: float | None
    standardized: bool
    n_test: int


class TrainTaskDoc(Doc, kw_only=True):
    checkpoint: str
    created: bool
    task: LearnedTask
    task_ids: list[int]  # every learned task, in learning order
    checkpoint_bytes: int
    resumed_from_epoch: int
    warnings: list[str]


# -- eval -------------------------------------------------------------------------------------------
class EvalTask(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task: int
    order: int
    status: str  # proven | outputs-differ | data-changed | changed | record-changed
    accuracy: float
    accuracy_at_learning: float
    change: float | None  # accuracy - accuracy_at_learning (null when the test data or the record differs)
    n_test: int
    subnet_match: bool
    data_match: bool
    outputs_match: bool | None
    differing_outputs: int | None
    record_match: bool  # the task's record digest holds (false: record-changed, a damaged record)


class Matrix(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task_ids: list[int]  # learning order: row i is after learning task_ids[i]
    rows: list[list[float | None]]
    now: list[float | None]


class EvalDoc(Doc, kw_only=True):
    checkpoint: str
    tasks: list[EvalTask]
    acc: float | None
    bwt: float | None
    bwt_task_ids: list[int]
    forget_free: bool
    outputs_match: bool
    changed: list[int]
    outputs_differ: list[int]
    data_changed: list[int]
    record_changed: list[int]
    capacity_used: float | None
    tampered: list[str]
    signature: str
    matrix: Matrix


# -- inspect ----------------------------------------------------------------------------------------
class InspectTask(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task: int
    order: int
    n_classes: int
    classes: list[int | str]
    accuracy_at_learning: float
    capacity: float | None
    epochs: int | None
    batch_size: int | None
    lr: float | None
    seed: int | None
    method: str
    device: str | None
    best_epoch: int | None
    train_seconds: float | None
    learned_at: str | None
    standardized: bool
    mask_density: float | None
    reuse_of_earlier: float | None
    new_weights: int | None
    layers: dict[str, dict[str, float]]


class InspectLayer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    layer: str
    shape: list[int]
    weights: int
    used: int
    free: int
    used_fraction: float


class InspectCheckpointDoc(Doc, tag="checkpoint", tag_field="kind", kw_only=True):
    checkpoint: str
    format: str
    version: int
    benchmark: str
    model: dict[str, Any]
    method: str
    seed: int
    wsn_version: str | None
    signature: str
    task_ids: list[int]
    capacity_used: float | None
    mask_codec: str | None
    tasks: list[InspectTask]
    layers: list[InspectLayer]
    size: dict[str, int]
    tampered: list[str]


class InspectMasksDoc(Doc, tag="packed-masks", tag_field="kind", kw_only=True):
    file: str
    version: int
    codec: str
    task_ids: list[int]
    weights: int
    bytes: int
    header_bytes: int
    payload_bytes: int
    bits_per_weight_per_task: float
    layers: list[dict[str, Any]]
    streams: list[dict[str, Any]]
    meta: dict[str, Any]
    checksums_ok: bool


# -- pack-masks / unpack-masks ----------------------------------------------------------------------
class PackDoc(Doc, kw_only=True):
    checkpoint: str
    output: str
    codec: str
    requested_codec: str
    bytes: int
    report: dict[str, Any]  # formats.storage_report (docs/FORMAT.md)


class UnpackDoc(Doc, kw_only=True):
    file: str
    codec: str
    task_ids: list[int]
    layers: list[str]
    checkpoint: str | None
    matches_checkpoint: bool | None
    output: str | None


# -- predict / export / report ----------------------------------------------------------------------
class PredictDoc(Doc, kw_only=True):
    checkpoint: str
    task: int
    input: str
    n: int
    files: list[str] | None  # image inputs: the file of each prediction, in order (None for arrays)
    classes: list[int | str]
    predictions: list[int | str]
    probabilities: list[list[float]] | None
    output: str | None


class ExportDoc(Doc, kw_only=True):
    checkpoint: str
    task: int
    output: str
    format: str  # pt2 | safetensors
    bytes: int


class ReportDoc(Doc, kw_only=True):
    checkpoint: str
    output: str
    files: list[str]


DOCUMENTS: dict[str, type] = {
    "train-task": TrainTaskDoc,
    "eval": EvalDoc,
    "inspect": InspectCheckpointDoc | InspectMasksDoc,
    "pack-masks": PackDoc,
    "unpack-masks": UnpackDoc,
    "predict": PredictDoc,
    "export": ExportDoc,
    "report": ReportDoc,
}


def json_schema_text(command: str) -> str:
    """The JSON Schema of a command's document, as docs/JSON.md shows it."""
    return msgspec.json.format(msgspec.json.encode(msgspec.json.schema(DOCUMENTS[command])), indent=2).decode()


_INTRO = """# wsn's JSON output

Every command takes `--json` and then writes exactly one JSON document on stdout (for `pack-masks -o -`
the document goes to stderr, since stdout carries the file). Each document names its schema in
`"schema": "wsn.<command>/<version>"`; a version changes only when a field is removed or changes
meaning (new fields may be added in the same version). Across commands the same things have the
same names: `checkpoint` is the checkpoint's path as given, `tasks` is always a list of task records,
`task_ids` a list of task ids, in learning order unless said otherwise. A number that could not be
measured is `null`, never NaN. `tests/cli/test_use_tasks.py` validates every command's output
against these schemas, and checks this file is current (regenerate it with
`python -m wsncli.commands.schemas > docs/JSON.md`).

Statuses in `wsn.eval`: `proven` (subnetwork and predictions identical to those at learning),
`outputs-differ` (subnetwork bit-identical, some predictions differ: near-ties computed differently
on another machine, thread count or device; a warning, exit 0), `data-changed` (the test data is not
the one used at learning: accuracy not comparable, left out of BWT; the subnetwork is still proven),
`changed` (the subnetwork changed: forgetting, exit 3), `record-changed` (format 3: the task's record
fails its record digest: what data it is measured on, its labels or its recorded digests were edited,
no parameter changed; a damaged record, exit 1, and `forget_free` is false). BWT = mean over the tasks
learned before the last one, whose test data is unchanged, of (accuracy now - accuracy at learning).
"""


def markdown() -> str:
    parts = [_INTRO]
    for command in DOCUMENTS:
        parts.append(
            f"## `wsn {command} --json`: `{schema_id(command)}`\n\n```json\n{json_schema_text(command)}\n```\n"
        )
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
