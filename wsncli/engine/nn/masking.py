"""`masked(module)`: any user network's Linear and Conv2d layers become masked layers, its BatchNorm
layers per-task, in place.

A masked layer keeps its name and its weight values (a score per weight is added); its bias, if it
had one, becomes a bias per task (a new task's starts at zero, as the built-in `--bias`). A BatchNorm
layer becomes one BatchNorm per task. Other layers with parameters (LayerNorm, Embedding, ...) are
left shared: the `Learner` lets the first task train them and keeps them bit-identical afterwards.
Which task the per-task parts serve is set by `set_task` (the Learner and the networks do it).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wsncli.engine.nn.subnet import SubnetLayer
from wsncli.errors import TaskError, UsageError


class TaskPart(nn.Module):
    """A module with per-task state; `active_task` is the task it serves (None: none chosen yet)."""

    active_task: int | None = None
    probing = False  # shape probe: run without a task (no bias, BatchNorm as identity)

    def add_task(self, task: int, device: torch.device | None = None) -> None:
        """Create task's own state (on `device`; default: where the layer is)."""
        raise NotImplementedError

    def owned(self, task: int) -> list[nn.Parameter]:
        """The parameters that belong to `task` alone."""
        raise NotImplementedError


class _MaskedBias(TaskPart):
    """Mix-in: a bias per task, added to the layer's output channel (dim 1)."""

    def _init_bias(self, out_channels: int, has_bias: bool) -> None:
        self.out_channels, self.has_bias = out_channels, has_bias
        self.task_bias = nn.ParameterDict()
        self.mode = "none"  # no task chosen: forward refuses (the dense network is no task's function)

    def add_task(self, task: int, device: torch.device | None = None) -> None:
        if self.has_bias and str(task) not in self.task_bias:
            self.task_bias[str(task)] = nn.Parameter(torch.zeros(self.out_channels, device=self.weight.device))

    def owned(self, task: int) -> list[nn.Parameter]:
        return [self.task_bias[str(task)]] if str(task) in self.task_bias else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none" and not self.probing:
            raise TaskError(f"{type(self).__name__}: no task chosen; run it inside learner.learning(t) or using(t)")
        out = self._apply_weight(x, self.effective_weight())  # (B, out, ...)
        if self.has_bias and not self.probing:
            if self.active_task is None or str(self.active_task) not in self.task_bias:
                raise TaskError(f"{type(self).__name__}: task {self.active_task} has no bias here")
            bias = self.task_bias[str(self.active_task)]
            out = out + bias.view(1, -1, *([1] * (out.dim() - 2)))
        return out


class MaskedLinear(_MaskedBias, SubnetLayer):
    """nn.Linear with a mask per task over its weight (out, in) and a bias per task."""

    def __init__(self, source: nn.Linear) -> None:
        SubnetLayer.__init__(self)
        self.in_features, self.out_features = source.in_features, source.out_features
        self.weight = nn.Parameter(source.weight.detach().clone())
        self.scores = nn.Parameter(torch.empty_like(self.weight))
        self._init_parameters(keep_weight=True)
        self._init_bias(self.out_features, source.bias is not None)

    def _apply_weight(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)  # (B, *, in) -> (B, *, out)


class MaskedConv2d(_MaskedBias, SubnetLayer):
    """nn.Conv2d (any stride, padding, dilation, groups; zero padding) with a mask and a bias per task."""

    def __init__(self, source: nn.Conv2d) -> None:
        SubnetLayer.__init__(self)
        if source.padding_mode != "zeros":
            raise UsageError(f"Conv2d with padding_mode={source.padding_mode!r} cannot be masked (only 'zeros')")
        self.stride, self.padding = source.stride, source.padding
        self.dilation, self.groups = source.dilation, source.groups
        self.weight = nn.Parameter(source.weight.detach().clone())  # (out, in / groups, kh, kw)
        self.scores = nn.Parameter(torch.empty_like(self.weight))
        self._init_parameters(keep_weight=True)
        self._init_bias(source.out_channels, source.bias is not None)

    def _apply_weight(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, out, H', W')
        return F.conv2d(x, w, stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


class TaskBatchNorm(TaskPart):
    """One BatchNorm (same settings as the layer it replaces, fresh statistics) per task."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self._template = (_fresh(source),)  # a tuple: not a submodule, no parameters to train
        self.norms = nn.ModuleDict()

    def add_task(self, task: int, device: torch.device | None = None) -> None:
        if str(task) not in self.norms:
            self.norms[str(task)] = _fresh(self._template[0]).to(device)

    def owned(self, task: int) -> list[nn.Parameter]:
        return list(self.norms[str(task)].parameters()) if str(task) in self.norms else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probing:
            return x
        if self.active_task is None or str(self.active_task) not in self.norms:
            raise TaskError(f"TaskBatchNorm: task {self.active_task} has no BatchNorm here; choose a task first")
        return self.norms[str(self.active_task)](x)


def _fresh(norm: nn.Module) -> nn.Module:
    """A copy of a BatchNorm with reset statistics and affine parameters (1, 0)."""
    fresh = copy.deepcopy(norm)
    fresh.reset_parameters()
    return fresh


@dataclass(frozen=True)
class MaskingReport:
    """What `masked` did: module names of the layers masked, made per-task, and left as they are."""

    masked: tuple[str, ...]
    per_task: tuple[str, ...]  # BatchNorm layers: one per task
    shared: tuple[str, ...]  # other layers with parameters: trained by the first task only
    untouched: tuple[str, ...] = field(default=())  # layers without parameters (ReLU, pooling, ...)


def masked(module: nn.Module) -> nn.Module:
    """Swap, in place, every nn.Linear / nn.Conv2d of `module` for a masked layer (names and weight
    values kept; a bias becomes a bias per task) and every BatchNorm for one BatchNorm per task;
    other layers are left as they are. Returns `module`; `masking_report(module)` says what was done.
    Refuses a module already masked, one with nothing to mask, and convolutions it cannot mask."""
    if any(isinstance(m, (SubnetLayer, TaskPart)) for m in module.modules()):
        raise UsageError("the module is already masked")
    swaps: list[tuple[str, nn.Module]] = []
    made: dict[int, nn.Module] = {}  # a layer registered under two names becomes one masked layer
    for name, child in module.named_modules(remove_duplicate=False):
        if id(child) in made:
            swaps.append((name, made[id(child)]))
        elif type(child) is nn.Linear:
            swaps.append((name, made.setdefault(id(child), MaskedLinear(child))))
        elif type(child) is nn.Conv2d:
            swaps.append((name, made.setdefault(id(child), MaskedConv2d(child))))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            swaps.append((name, made.setdefault(id(child), TaskBatchNorm(child))))
        elif isinstance(child, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d, nn.Bilinear)) or (
            isinstance(child, (nn.Linear, nn.Conv2d)) and type(child) not in (nn.Linear, nn.Conv2d)
        ):
            raise UsageError(f"layer {name!r} ({type(child).__name__}) cannot be masked; use nn.Linear or nn.Conv2d")
    if not any(isinstance(new, SubnetLayer) for _, new in swaps):
        raise UsageError("the module has no nn.Linear or nn.Conv2d layer to mask")
    for name, new in swaps:
        if not name:
            raise UsageError("masked() takes a network holding layers, not a single layer")
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name), attr, new)
    module._wsn_report = _report(module)
    return module


def _report(module: nn.Module) -> MaskingReport:
    masked_, per_task, shared, untouched = [], [], [], []
    inside = set()
    for name, child in module.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(child, SubnetLayer):
            masked_.append(name)
            inside.add(name)
        elif isinstance(child, TaskBatchNorm):
            per_task.append(name)
            inside.add(name)
        elif next(child.children(), None) is None:  # a leaf
            (shared if any(True for _ in child.parameters(recurse=False)) else untouched).append(name)
    return MaskingReport(tuple(masked_), tuple(per_task), tuple(shared), tuple(untouched))


def masking_report(module: nn.Module) -> MaskingReport:
    """The report of `masked(module)` (UsageError when the module was not masked)."""
    report = getattr(module, "_wsn_report", None)
    if report is None:
        raise UsageError("the module was not masked: call wsncli.masked(module) first")
    return report


def task_parts(module: nn.Module) -> list[TaskPart]:
    """The modules with per-task state, in module order."""
    return [m for m in module.modules() if isinstance(m, TaskPart)]


def set_task(module: nn.Module, task: int | None) -> None:
    """Make every per-task part of `module` serve `task`."""
    for part in task_parts(module):
        part.active_task = task


def shared_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of layers left shared (neither masked nor per-task)."""
    skip = {id(p) for part in module.modules() if isinstance(part, (SubnetLayer, TaskPart)) for p in part.parameters()}
    return [p for p in module.parameters() if id(p) not in skip]


def fingerprint(module: nn.Module) -> str:
    """sha256 (hex) of the masked architecture: every leaf layer's name, kind and parameter shapes,
    and the masked layers' convolution settings, in module order (docs/CHECKPOINT.md)."""
    lines, inside = [], ()
    for name, child in module.named_modules():
        if inside and name.startswith(inside):
            continue
        if isinstance(child, (TaskBatchNorm, SubnetLayer)):
            inside += (name + ".",)
        if isinstance(child, TaskBatchNorm):
            t = child._template[0]
            lines.append(f"{name}:{type(t).__name__}:{t.num_features}:{t.eps}:{t.momentum}:{t.affine}")
        elif isinstance(child, SubnetLayer):
            extra = [getattr(child, a, None) for a in ("stride", "padding", "dilation", "groups")]
            lines.append(f"{name}:{type(child).__name__}:{list(child.weight.shape)}:{child.has_bias}:{extra}")
        elif next(child.children(), None) is None:
            shapes = [list(p.shape) for p in child.parameters(recurse=False)]
            lines.append(f"{name}:{type(child).__name__}:{shapes}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
