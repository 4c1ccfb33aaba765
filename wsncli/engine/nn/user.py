"""Your own network behind the built-in machinery: a trunk from a factory, masked, with wsn's heads.

`--arch-module PKG.MODULE:FACTORY` names a callable taking the task's input shape and returning the
trunk, an nn.Module mapping (B, *input_shape) -> (B, features). wsn masks it (nn.masking) and adds
a head per task. The checkpoint records the name and the architecture's fingerprint; a file never
makes wsn import anything: the caller names the factory every time, and a different fingerprint is
refused (docs/API.md, docs/CHECKPOINT.md).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from wsncli.engine.limits import CUSTOM_ARCH as CUSTOM_ARCH
from wsncli.engine.nn.base import ModelConfig, WSNNet
from wsncli.engine.nn.masking import TaskBatchNorm, fingerprint, masked, masking_report, set_task, task_parts
from wsncli.engine.nn.subnet import SubnetLayer
from wsncli.errors import UsageError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")

TrunkFactory = Callable[[tuple[int, ...]], nn.Module]


@dataclass(frozen=True)
class ArchModule:
    """A trunk factory and the name it is known by (`PKG.MODULE:FACTORY`, or any label from Python)."""

    name: str
    factory: TrunkFactory


def load_arch_module(name: str) -> ArchModule:
    """Import `PKG.MODULE` and take its `FACTORY` (UsageError, one line, when that fails)."""
    if not _NAME.match(name):
        raise UsageError(f"--arch-module must be PKG.MODULE:FACTORY, got {name[:200]!r}")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module: any failure is one line
        raise UsageError(f"--arch-module {name}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--arch-module {name}: {module_name} has no callable {attr!r}")
    return ArchModule(name, factory)


class UserNet(WSNNet):
    """A factory's trunk, masked, with a head per task; per-task BatchNorm and biases live in the trunk
    (`task_norms` / `task_biases` hold the same tensors, so the checkpoint stores them as usual).
    Every masked layer gets a bias per task when any of the factory's layers has a bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if config.factory is None:
            raise UsageError(f"this network is built by an arch module ({config.module}); pass it")
        try:
            trunk = config.factory(tuple(config.input_shape))
        except Exception as exc:  # noqa: BLE001 - the user's code
            raise UsageError(f"arch module {config.module}: the factory failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(trunk, nn.Module):
            raise UsageError(f"arch module {config.module}: the factory returned {type(trunk).__name__}, not a module")
        self.body = masked(trunk)
        report = masking_report(self.body)
        if report.shared:
            raise UsageError(
                f"arch module {config.module}: layer {report.shared[0]!r} has parameters wsn can neither mask nor "
                "keep per task (the checkpoint has no place for them); use it from Python with wsncli.Learner"
            )
        layers = [m for m in self.body.modules() if isinstance(m, SubnetLayer)]
        if any(layer.has_bias for layer in layers):
            for layer in layers:
                layer.has_bias = True
        for layer in layers:
            layer.dense()
        self.feature_dim = self._probe(config)
        self.fingerprint = fingerprint(self.body)

    def _probe(self, config: ModelConfig) -> int:
        parts = task_parts(self.body)
        for part in parts:
            part.probing = True
        device = next(self.body.parameters()).device
        try:
            with torch.no_grad():
                out = self.body(torch.zeros(2, *config.input_shape, device=device))  # (2, features)
        except Exception as exc:  # noqa: BLE001 - the user's code
            raise UsageError(
                f"arch module {config.module}: the trunk fails on inputs {tuple(config.input_shape)}: "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from None
        finally:
            for part in parts:
                part.probing = False
        if out.dim() != 2:
            raise UsageError(
                f"arch module {config.module}: the trunk must return (batch, features), got {tuple(out.shape)}"
            )
        return int(out.shape[1])

    def add_task(self, task: int, n_classes: int) -> None:
        super().add_task(task, n_classes)
        device = next(self.body.parameters()).device
        for part in task_parts(self.body):
            part.add_task(task, device)
        norms = [part.norms[str(task)] for part in task_parts(self.body) if isinstance(part, TaskBatchNorm)]
        if norms:
            self.task_norms[str(task)] = nn.ModuleList(norms)
        layers = self.subnet_layers().values()
        if any(layer.has_bias for layer in layers):
            self.task_biases[str(task)] = nn.ParameterList(layer.task_bias[str(task)] for layer in layers)

    def prune_to(self, task: int) -> None:
        """Drop every other task's biases and BatchNorm from the trunk (an export holds one task)."""
        for part in task_parts(self.body):
            for container in (getattr(part, "task_bias", None), getattr(part, "norms", None)):
                for key in [k for k in container or {} if k != str(task)]:
                    del container[key]

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        set_task(self.body, task)
        return self.body(x)  # (B, features)
