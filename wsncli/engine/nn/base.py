"""What every WSN network shares: its config, masked trunk layers, a dense head and BatchNorm per task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from wsncli.engine.nn.selection import NonFiniteScores
from wsncli.engine.nn.subnet import SubnetLayer, k_for_capacity
from wsncli.errors import DataError, TaskError


@dataclass(frozen=True)
class ModelConfig:
    """The shape-defining settings of a network (stored in the checkpoint, must match on resume).

    `hidden` is read by mlp only; `width` (nf) by resnet18 only, None meaning the arch's default.
    `bias`: every masked layer gets a bias vector per task (owned by the task, like its head).
    """

    arch: str
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...] = field(default=(100, 100))
    width: int | None = None
    bias: bool = False
    module: str | None = None  # arch "custom": the arch module's name (nn.user), stored
    factory: Callable | None = field(default=None, compare=False, repr=False)  # its trunk factory, never stored


def image_input(config: ModelConfig, min_side: int) -> tuple[int, int, int]:
    """(C, H, W) of config's inputs; refuses other ranks and images smaller than min_side (DataError:
    the shape comes from the task's data)."""
    if len(config.input_shape) != 3:
        raise DataError(f"arch {config.arch} needs image inputs (C, H, W), got shape {config.input_shape}")
    c, h, w = config.input_shape
    if h < min_side or w < min_side:
        raise DataError(
            f"arch {config.arch} needs images of at least {min_side}x{min_side}, got {config.input_shape}; "
            f"--image-size {min_side} (or more) resizes or pads them where the benchmark allows"
        )
    return c, h, w


def shift(h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h (B, C, ...) plus a per-channel bias (C,), or h itself when there is none."""
    if bias is None:
        return h
    return h + bias.view(1, -1, *([1] * (h.dim() - 2)))  # (B, C, ...)


class WSNNet(nn.Module):
    """Base: `trunk(x, task)` -> features; heads, per-task BatchNorm and per-task biases keyed by task id.

    A task's biases (config.bias) are one vector per masked layer, in `subnet_layers()` order, added
    to the layer's output (after its BatchNorm where it has one: before it, the norm would cancel
    them). The masked weights stay bias-free and shared.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.heads = nn.ModuleDict()
        self.task_norms = nn.ModuleDict()
        self.task_biases = nn.ModuleDict()
        self.feature_dim = 0
        self._no_biases: list[None] | None = None
        self.needs_task_mode = False  # set by the checkpoint loader: forward refuses until a mode is chosen
        self.mode_owner = 0  # which store.checkpoint.TaskFunction set the current mode (0: none)

    def subnet_layers(self) -> dict[str, SubnetLayer]:
        """Masked layers by stable name, in forward order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, SubnetLayer)}

    def add_task(self, task: int, n_classes: int) -> None:
        """Create task's head (and BatchNorm when the net has any); old tasks are untouched."""
        self.heads[str(task)] = nn.Linear(self.feature_dim, n_classes)
        norms = self._make_norms()
        if norms is not None:
            self.task_norms[str(task)] = norms
        if self.config.bias:
            self.task_biases[str(task)] = nn.ParameterList(
                nn.Parameter(torch.zeros(layer.weight.shape[0])) for layer in self.subnet_layers().values()
            )

    def _make_norms(self) -> nn.ModuleList | None:
        return None

    def biases(self, task: int) -> list[torch.Tensor | None]:
        """Task's bias per masked layer, in `subnet_layers()` order (None each without biases)."""
        if str(task) in self.task_biases:
            return list(self.task_biases[str(task)])
        if self._no_biases is None:  # the layers are fixed at construction: count them once
            self._no_biases = [None] * len(self.subnet_layers())
        return self._no_biases

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        if self.needs_task_mode:
            raise TaskError(
                "this network holds several tasks' subnetworks and runs none of them until one is chosen: "
                "call wsncli.engine.usecases.outputs.set_task_mode(model, checkpoint.masks[task]) first (the "
                "dense network is no task's function)"
            )
        return self.heads[str(task)](self.trunk(x, task))  # (B, n_classes)

    # modes over all masked layers ------------------------------------------------------------
    def train_subnet(self, capacity: float, frozen: dict[str, torch.Tensor] | None) -> None:
        self.needs_task_mode, self.mode_owner = False, 0
        for name, layer in self.subnet_layers().items():
            layer.train_subnet(k_for_capacity(layer.weight.numel(), capacity), None if frozen is None else frozen[name])

    def use_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.needs_task_mode, self.mode_owner = False, 0
        for name, layer in self.subnet_layers().items():
            layer.use_mask(masks[name])

    def dense(self) -> None:
        self.needs_task_mode, self.mode_owner = False, 0
        for layer in self.subnet_layers().values():
            layer.dense()

    def current_masks(self) -> dict[str, torch.Tensor]:
        """Each layer's top-k mask of its current scores; refuses scores that are not finite (no
        mask of exactly k weights is defined then)."""
        masks = {}
        for name, layer in self.subnet_layers().items():
            if not bool(torch.isfinite(layer.scores.detach()).all()):
                raise NonFiniteScores(f"scores of layer {name!r} are NaN or infinite")
            masks[name] = layer.current_mask().clone()
            if int(masks[name].sum()) != layer.k:  # never: the selection is exact
                raise RuntimeError(
                    f"internal error: mask of layer {name!r} keeps {int(masks[name].sum())} weights, not {layer.k}"
                )
        return masks


def set_task_mode(model: WSNNet, masks: dict[str, torch.Tensor] | None) -> None:
    """Inference mode for one task: its stored mask (cached masked weights) or dense (baseline)."""
    if masks is None:
        model.dense()
    else:
        model.use_masks(masks)
    model.eval()
