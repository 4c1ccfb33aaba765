"""One learned task as a self-contained program: `.pt2` (torch.export, loadable with plain torch)
or `.safetensors` (its weights plus the same program as a JSON graph of aten operations).

The program takes raw inputs shaped like the task's data and returns its logits: the input
transform, the trunk with the task's masked weights baked in (zeros elsewhere, other tasks'
heads, norms, biases and all scores left out), its BatchNorm statistics, biases and head — the operations
`wsn predict` runs, so both give the same bits on the CPU. docs/EXPORT.md specifies both files.
"""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsncli import __version__
from wsncli.engine.nn.user import ArchModule, UserNet
from wsncli.engine.store.checkpoint import Checkpoint, load_checkpoint, task_input_shape
from wsncli.engine.store.paths import file_prefix, plan_output, write_output
from wsncli.engine.usecases.predict import task_transform
from wsncli.errors import TaskError, UsageError, WsnError

FORMAT_NAME = "wsn-task-export"
FORMAT_VERSION = 1
SUFFIXES = (".pt2", ".safetensors")


class ExportError(WsnError):
    """The task cannot be written in the asked format."""


class TaskProgram(nn.Module):
    """raw inputs (B, *sample) -> logits (B, n_classes) of one task, standalone."""

    def __init__(self, ckpt: Checkpoint, task: int, sample_dtype: np.dtype) -> None:
        super().__init__()
        model = copy.deepcopy(ckpt.model).cpu()
        masks = ckpt.masks.get(task)
        with torch.no_grad():
            for name, layer in model.subnet_layers().items():
                if masks is not None:
                    layer.weight.copy_(
                        torch.where(masks[name], layer.weight, torch.zeros((), dtype=layer.weight.dtype))
                    )
                del layer.scores  # the program needs only the masked weights
        model.dense()  # the task's masked weights, baked in above
        model.heads = nn.ModuleDict({str(task): model.heads[str(task)]})
        if str(task) in model.task_norms:
            model.task_norms = nn.ModuleDict({str(task): model.task_norms[str(task)]})
        if str(task) in model.task_biases:
            model.task_biases = nn.ModuleDict({str(task): model.task_biases[str(task)]})
        if isinstance(model, UserNet):
            model.prune_to(task)
        self.net = model.eval()
        self.task = task
        prep = task_transform(ckpt, task, np.zeros(1, sample_dtype))
        self.divide, self.has_scale, self.affine = (
            prep.divide,
            prep.divide or prep.scale != 1.0,
            not prep.is_identity_affine,
        )
        self.register_buffer("scale", torch.tensor(np.float32(prep.scale)))
        self.register_buffer("mean", torch.from_numpy(np.ascontiguousarray(prep.mean)))
        self.register_buffer("std", torch.from_numpy(np.ascontiguousarray(prep.std)))
        self.padding = prep.padding
        self.permuted = prep.permutation is not None
        if self.permuted:
            self.register_buffer("permutation", torch.from_numpy(prep.permutation.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # same operations as data.device.device_transform
        out = x.to(torch.float32)
        if self.permuted:
            out = out.reshape(out.shape[0], -1)[:, self.permutation].reshape(x.shape)
        if self.divide:
            out = out / self.scale
        elif self.has_scale:
            out = out * self.scale
        if self.affine:
            out = (out - self.mean) / self.std
        if self.padding:
            out = nn.functional.pad(out, (0, self.padding))  # (B, D + padding): the network's width
        return self.net(out, self.task)  # (B, n_classes)


@dataclass(frozen=True)
class ExportResult:
    format: str
    data: bytes


def describe(ckpt: Checkpoint, task: int, sample_dtype: np.dtype) -> dict:
    record = ckpt.task_record(task)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "wsn_version": __version__,
        "task": task,
        "benchmark": ckpt.meta.benchmark,
        "classes": list(record.classes),
        "input_shape": list(task_input_shape(ckpt, task)),
        "input_dtype": np.dtype(sample_dtype).name,
        "arch": ckpt.meta.model.arch,
        "outputs": "logits (B, n_classes); argmax i is the label classes[i]",
        "subnet_digest": record.subnet_digest,
    }


def _exported(ckpt: Checkpoint, task: int, sample_dtype: np.dtype) -> torch.export.ExportedProgram:
    program = TaskProgram(ckpt, task, sample_dtype)
    example = torch.zeros((2, *task_input_shape(ckpt, task)), dtype=torch.from_numpy(np.zeros(1, sample_dtype)).dtype)
    try:
        return torch.export.export(program, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds; all mean "cannot export"
        raise ExportError(
            f"torch.export could not trace task {task} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None


def export_task(ckpt: Checkpoint, task: int, suffix: str, sample_dtype: np.dtype | None = None) -> ExportResult:
    """The bytes of task `task` as a `.pt2` or `.safetensors` file, for inputs of `sample_dtype`
    (default: the dtype of the task's training data, float32 if unrecorded)."""
    if task not in ckpt.learned():
        raise TaskError(
            f"task {task} is not learned in this checkpoint (learned: {', '.join(map(str, ckpt.learned())) or 'none'})"
        )
    if suffix not in SUFFIXES:
        raise UsageError(
            "export writes .pt2 (torch.export program) or .safetensors files, not "
            f"{suffix or 'a file without suffix'!r}"
        )
    ckpt.require_intact_record(task)
    if sample_dtype is None:
        sample_dtype = np.dtype(ckpt.task_record(task).input_dtype or "float32")
    ep = _exported(ckpt, task, sample_dtype)
    info = describe(ckpt, task, sample_dtype)
    if suffix == ".safetensors":
        return ExportResult("safetensors", _safetensors(ep, info))
    buffer = io.BytesIO()
    try:
        torch.export.save(ep, buffer, extra_files={"wsn.json": json.dumps(info)})
    except Exception as exc:  # noqa: BLE001 - torch's packager raises many kinds; all mean "cannot save"
        raise ExportError(
            f"torch.export could not save task {task} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None
    return ExportResult("pt2", buffer.getvalue())


def _encode_arg(value):
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if isinstance(value, (list, tuple)):
        return [_encode_arg(v) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": "cpu"}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ExportError(f"cannot describe a graph argument of type {type(value).__name__}")


def program_graph(ep: torch.export.ExportedProgram) -> tuple[list[dict], dict[str, str]]:
    """The exported graph as JSON-able nodes, and which placeholder holds which tensor."""
    sig = ep.graph_signature
    inputs = {
        **sig.inputs_to_parameters,
        **sig.inputs_to_buffers,
        **getattr(sig, "inputs_to_lifted_tensor_constants", {}),
    }
    nodes = []
    for node in ep.graph.nodes:
        entry = {"name": node.name, "op": node.op}
        if node.op == "call_function":
            target = node.target
            if not isinstance(target, torch._ops.OpOverload):
                raise ExportError(f"graph node {node.name} calls {target}, not an aten operation")
            entry["target"] = f"{target.namespace}.{target._opname}.{target._overloadname}"
        if node.op in ("call_function", "output"):
            entry["args"], entry["kwargs"] = (
                _encode_arg(list(node.args)),
                {k: _encode_arg(v) for k, v in node.kwargs.items()},
            )
        nodes.append(entry)
    return nodes, inputs


def _safetensors(ep: torch.export.ExportedProgram, info: dict) -> bytes:
    import safetensors.torch

    nodes, inputs = program_graph(ep)
    tensors = {
        name: t.detach().contiguous()
        for name, t in {**ep.state_dict, **ep.constants}.items()
        if isinstance(t, torch.Tensor)
    }
    missing = sorted(set(inputs.values()) - set(tensors))
    if missing:
        raise ExportError(f"the exported program has no tensor {missing[0]!r}")
    metadata = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION),
        "wsn": json.dumps(info),
        "graph": json.dumps(nodes),
        "inputs": json.dumps(inputs),
    }
    return _sorted(safetensors.torch.save(tensors, metadata=metadata))


def _sorted(raw: bytes) -> bytes:
    from wsncli.engine.store.container import _sorted_header

    return _sorted_header(raw)


def output_suffix(path: Path) -> str:
    return Path(path).suffix.lower()


@dataclass(frozen=True)
class ExportRequest:
    """What `wsn export` was asked: the file, the task, the output (.pt2 or .safetensors), whether to
    overwrite a file of another kind, and the trunk factory of a custom network."""

    ckpt: Path
    task: int
    output: Path
    force: bool = False
    arch: ArchModule | None = None


@dataclass(frozen=True)
class ExportWritten:
    format: str  # "pt2" or "safetensors"
    bytes: int


def export_file(req: ExportRequest) -> ExportWritten:
    """`wsn export` in one call: plan the output (refused before any work), load, export, write."""
    suffix = output_suffix(req.output)
    if suffix not in SUFFIXES:
        raise UsageError(f"{req.output}: export writes .pt2 (torch.export program) or .safetensors files")
    own = _is_pt2_export if suffix == ".pt2" else (lambda p: b'"wsn-task-export"' in file_prefix(p, 4096))
    target = plan_output(req.output, what=f"{suffix} export", inputs=[req.ckpt], force=req.force, is_own_kind=own)
    result = export_task(load_checkpoint(req.ckpt, arch=req.arch), req.task, suffix)  # never a checkpoint
    return ExportWritten(result.format, write_output(target, result.data))


def _is_pt2_export(path: Path) -> bool:
    """A .pt2 archive that wsn export wrote (it holds the extra file wsn.json)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("wsn.json") for name in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
