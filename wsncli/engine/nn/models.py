"""Networks for WSN: masked trunk layers shared by all tasks, a dense head and BatchNorm per task."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wsncli.engine.nn.subnet import SubnetConv2d, SubnetLayer, SubnetLinear, k_for_capacity
from wsncli.errors import UsageError

ARCHS = ("mlp", "conv")


@dataclass(frozen=True)
class ModelConfig:
    """The shape-defining settings of a network (stored in the checkpoint, must match on resume)."""

    arch: str
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...] = field(default=(100, 100))

    def to_dict(self) -> dict:
        return {"arch": self.arch, "input_shape": list(self.input_shape), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(d["arch"], tuple(int(v) for v in d["input_shape"]), tuple(int(v) for v in d["hidden"]))


def parse_hidden(text: str) -> tuple[int, ...]:
    """'100-100' or '100,100' -> (100, 100)."""
    parts = [p for p in text.replace(",", "-").split("-") if p.strip()]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--hidden must be sizes like 100-100, got {text!r}") from None
    if not sizes or any(s < 1 or s > 65536 for s in sizes):
        raise UsageError(f"--hidden sizes must be 1..65536, got {text!r}")
    return sizes


class WSNNet(nn.Module):
    """Base: `trunk(x, task)` -> features; heads and per-task BatchNorm keyed by task id."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = nn.ModuleDict()
        self.task_norms = nn.ModuleDict()
        self.feature_dim = 0

    def subnet_layers(self) -> dict[str, SubnetLayer]:
        """Masked layers by stable name, in forward order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, SubnetLayer)}

    def add_task(self, task: int, n_classes: int) -> None:
        """Create task's head (and BatchNorm when the net has any); old tasks are untouched."""
        self.heads[str(task)] = nn.Linear(self.feature_dim, n_classes)
        norms = self._make_norms()
        if norms is not None:
            self.task_norms[str(task)] = norms

    def _make_norms(self) -> nn.ModuleList | None:
        return None

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[str(task)](self.trunk(x, task))  # (B, n_classes)

    # modes over all masked layers ------------------------------------------------------------
    def train_subnet(self, capacity: float, frozen: dict[str, torch.Tensor] | None) -> None:
        for name, layer in self.subnet_layers().items():
            layer.train_subnet(k_for_capacity(layer.weight.numel(), capacity), None if frozen is None else frozen[name])

    def use_masks(self, masks: dict[str, torch.Tensor]) -> None:
        for name, layer in self.subnet_layers().items():
            layer.use_mask(masks[name])

    def dense(self) -> None:
        for layer in self.subnet_layers().values():
            layer.dense()

    def current_masks(self) -> dict[str, torch.Tensor]:
        return {name: layer.current_mask().clone() for name, layer in self.subnet_layers().items()}


class MLPNet(WSNNet):
    """Flatten, masked Linear + ReLU per hidden size (no bias, as in the paper)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        sizes = [math.prod(config.input_shape), *config.hidden]
        self.layers = nn.ModuleList(SubnetLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.feature_dim = sizes[-1]

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)  # (B, D)
        for layer in self.layers:
            h = F.relu(layer(h))  # (B, hidden)
        return h


class ConvNet(WSNNet):
    """The paper's AlexNet-like net: conv 64-128-256 (k 4, 3, 2) + BN + ReLU + 2x2 pool, fc 2048-2048.

    BatchNorm has no affine parameters and keeps running statistics per task, so a task's outputs
    depend only on its own statistics (the official code's batch statistics would break BWT = 0).
    """

    CHANNELS = (64, 128, 256)
    KERNELS = (4, 3, 2)
    FC = (2048, 2048)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if len(config.input_shape) != 3:
            raise UsageError(f"arch conv needs image inputs (C, H, W), got shape {config.input_shape}")
        c, h, w = config.input_shape
        convs = []
        for out, k in zip(self.CHANNELS, self.KERNELS):
            convs.append(SubnetConv2d(c, out, k))
            c, h, w = out, (h - k + 1) // 2, (w - k + 1) // 2
        if h < 1 or w < 1:
            side = self.min_side()
            raise UsageError(f"arch conv needs images of at least {side}x{side}, got {config.input_shape}")
        self.convs = nn.ModuleList(convs)
        sizes = [c * h * w, *self.FC]
        self.fcs = nn.ModuleList(SubnetLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.feature_dim = sizes[-1]
        self.drop_conv, self.drop_fc = nn.Dropout(0.2), nn.Dropout(0.5)

    @classmethod
    def min_side(cls) -> int:
        """Smallest image side that leaves at least 1x1 after every conv + 2x2 pool (19 for k 4, 3, 2)."""
        side = 1
        for k in reversed(cls.KERNELS):
            side = 2 * side + k - 1
        return side

    def _make_norms(self) -> nn.ModuleList:
        norms = [nn.BatchNorm2d(ch, affine=False) for ch in self.CHANNELS]
        norms += [nn.BatchNorm1d(n, affine=False) for n in self.FC]
        return nn.ModuleList(norms)

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        norms = self.task_norms[str(task)]
        h = x  # (B, C, H, W)
        for i, conv in enumerate(self.convs):
            h = F.max_pool2d(F.relu(norms[i](conv(h))), 2)  # (B, C', H', W')
            h = self.drop_conv(h)
        h = h.reshape(h.shape[0], -1)  # (B, C'·H'·W')
        for j, fc in enumerate(self.fcs):
            h = self.drop_fc(F.relu(norms[len(self.convs) + j](fc(h))))  # (B, 2048)
        return h


def build_model(config: ModelConfig) -> WSNNet:
    """A fresh network for config; scores are initialised here, once, for the whole run."""
    if config.arch == "mlp":
        return MLPNet(config)
    if config.arch == "conv":
        return ConvNet(config)
    raise UsageError(f"unknown architecture {config.arch!r}; choose one of: {', '.join(ARCHS)}")
