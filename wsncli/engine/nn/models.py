"""Networks for WSN: masked trunk layers shared by all tasks, a dense head and BatchNorm per task.

`build_model(config)` makes any of `ARCHS`; the classes live in `convnets` and `resnet`, the shared
base in `base`. `count_parameters(config)` sizes a network without allocating it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wsncli.engine.limits import ARCHS, MAX_HIDDEN
from wsncli.engine.nn.base import ModelConfig, WSNNet, image_input, shift
from wsncli.engine.nn.convnets import Conv4Net, ConvNet, LeNet
from wsncli.engine.nn.masking import MaskedConv2d
from wsncli.engine.nn.resnet import DEFAULT_WIDTH, ResNet18
from wsncli.engine.nn.subnet import SubnetConv2d, SubnetLinear
from wsncli.engine.nn.user import CUSTOM_ARCH, UserNet
from wsncli.errors import UsageError

__all__ = [
    "ARCHS",
    "DEFAULT_WIDTH",
    "WIDTH_ARCHS",
    "Conv4Net",
    "ConvNet",
    "LeNet",
    "MLPNet",
    "ModelConfig",
    "ResNet18",
    "WSNNet",
    "build_model",
    "count_parameters",
    "image_input",
    "parse_hidden",
]

WIDTH_ARCHS = ("resnet18",)  # the archs `ModelConfig.width` applies to


def parse_hidden(text: str) -> tuple[int, ...]:
    """'100-100' or '100,100' -> (100, 100)."""
    parts = [p.strip() for p in text.replace(",", "-").split("-")]
    if any(not p for p in parts):  # '-100', '100-', '100--100': an empty size is a typo, not a layer fewer
        raise UsageError(f"--hidden must be sizes like 100-100, got {text!r}")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--hidden must be sizes like 100-100, got {text!r}") from None
    if not sizes:
        raise UsageError(f"--hidden must be sizes like 100-100, got {text!r}")
    if any(s < 1 or s > MAX_HIDDEN for s in sizes):
        raise UsageError(f"--hidden sizes must be 1..{MAX_HIDDEN}, got {text!r}")
    return sizes


class MLPNet(WSNNet):
    """Flatten, masked Linear + ReLU per hidden size (no bias, as in the paper)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        sizes = [math.prod(config.input_shape), *config.hidden]
        self.layers = nn.ModuleList(SubnetLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.feature_dim = sizes[-1]

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        h = x.flatten(1)  # (B, D)
        for layer, bias in zip(self.layers, self.biases(task)):
            h = F.relu(shift(layer(h), bias))  # (B, hidden)
        return h


_CLASSES: dict[str, type[WSNNet]] = {
    "mlp": MLPNet,
    "conv": ConvNet,
    "resnet18": ResNet18,
    "lenet": LeNet,
    "conv4": Conv4Net,
}


def build_model(config: ModelConfig) -> WSNNet:
    """A fresh network for config; scores are initialised here, once, for the whole run."""
    if config.arch == CUSTOM_ARCH:
        return UserNet(config)
    if config.arch not in _CLASSES:
        raise UsageError(f"unknown architecture {config.arch!r}; choose one of: {', '.join(ARCHS)}")
    if config.width is not None and config.arch not in WIDTH_ARCHS:
        raise UsageError(f"--width applies to arch {', '.join(WIDTH_ARCHS)} only, not {config.arch}")
    return _CLASSES[config.arch](config)


def count_parameters(config: ModelConfig) -> dict:
    """Sizes of config's network, built on the meta device (no memory, no compute).

    Returns {"arch", "input_shape", "width", "feature_dim", "masked_weights", "norm_features",
    "layers"}: "layers" maps each masked layer's name, in forward order, to {"kind", "weight_shape",
    "output_shape" (one sample's), "weights"}; each layer has as many scores as weights.
    "norm_features" is the number of BatchNorm channels one task adds (0 without BatchNorm);
    "bias_features" the number of bias values one task adds (one per output channel of every masked
    layer; 4 bytes each in the checkpoint, whether or not the network has biases).
    """
    with torch.device("meta"):
        model = build_model(config)
        model.add_task(1, 1)
    shapes: dict[str, list[int]] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, list(out.shape[1:])))
        for name, layer in model.subnet_layers().items()
    ]
    model.eval()
    with torch.no_grad():
        features = model.trunk(torch.empty(1, *config.input_shape, device="meta"), 1)  # (1, feature_dim)
    for hook in hooks:
        hook.remove()
    layers = {
        name: {
            "kind": "conv" if isinstance(layer, (SubnetConv2d, MaskedConv2d)) else "linear",
            "weight_shape": list(layer.weight.shape),
            "output_shape": shapes[name],
            "weights": layer.weight.numel(),
        }
        for name, layer in model.subnet_layers().items()
    }
    norms = model.task_norms["1"] if "1" in model.task_norms else []
    return {
        "arch": config.arch,
        "input_shape": list(config.input_shape),
        "width": getattr(model, "width", None),
        "feature_dim": int(features.shape[1]),
        "masked_weights": sum(entry["weights"] for entry in layers.values()),
        "norm_features": sum(norm.num_features for norm in norms),
        "bias_features": sum(entry["weight_shape"][0] for entry in layers.values()),
        "layers": layers,
    }
