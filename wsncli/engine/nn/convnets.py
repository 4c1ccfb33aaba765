"""Plain conv nets of the paper: the CIFAR AlexNet-like net, LeNet and the TinyImageNet 4-conv net.

Feature sizes are computed from the input shape; an image too small for the net is refused with the
smallest side it takes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsncli.engine.nn.base import ModelConfig, WSNNet, image_input, shift
from wsncli.engine.nn.dropout import BatchDropout
from wsncli.engine.nn.subnet import SubnetConv2d, SubnetLinear


def pooled_min_side(kernels: tuple[int, ...]) -> int:
    """Smallest side that leaves at least 1x1 after each unpadded conv (kernel k) + 2x2 max-pool."""
    side = 1
    for k in reversed(kernels):
        side = 2 * side + k - 1
    return side


def pooled_conv_stack(
    shape: tuple[int, int, int], channels: tuple[int, ...], kernels: tuple[int, ...]
) -> tuple[nn.ModuleList, tuple[int, int, int]]:
    """Unpadded masked convs, each followed (in the net's trunk) by a 2x2 max-pool; returns the
    convs and the (C, H, W) shape they leave."""
    c, h, w = shape
    convs = []
    for out, k in zip(channels, kernels):
        convs.append(SubnetConv2d(c, out, k))
        c, h, w = out, (h - k + 1) // 2, (w - k + 1) // 2
    return nn.ModuleList(convs), (c, h, w)


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
        self.convs, (c, h, w) = pooled_conv_stack(image_input(config, self.min_side()), self.CHANNELS, self.KERNELS)
        sizes = [c * h * w, *self.FC]
        self.fcs = nn.ModuleList(SubnetLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.feature_dim = sizes[-1]
        self.drop_conv, self.drop_fc = BatchDropout(0.2), BatchDropout(0.5)  # masks: nn.dropout

    @classmethod
    def min_side(cls) -> int:
        """Smallest image side the net takes (19 for kernels 4, 3, 2)."""
        return pooled_min_side(cls.KERNELS)

    def _make_norms(self) -> nn.ModuleList:
        norms = [nn.BatchNorm2d(ch, affine=False) for ch in self.CHANNELS]
        norms += [nn.BatchNorm1d(n, affine=False) for n in self.FC]
        return nn.ModuleList(norms)

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        norms, biases = self.task_norms[str(task)], self.biases(task)
        h = x  # (B, C, H, W)
        for i, conv in enumerate(self.convs):
            h = F.max_pool2d(F.relu(shift(norms[i](conv(h)), biases[i])), 2)  # (B, C', H', W')
            h = self.drop_conv(h)
        h = h.flatten(1)  # (B, C'·H'·W')
        for j, fc in enumerate(self.fcs, start=len(self.convs)):
            h = self.drop_fc(F.relu(shift(norms[j](fc(h)), biases[j])))  # (B, 2048)
        return h


class LeNet(WSNNet):
    """LeNet: conv 20, 50 (k 5) each + ReLU + 2x2 max-pool, then fc 500 + ReLU; no BatchNorm."""

    CHANNELS = (20, 50)
    KERNELS = (5, 5)
    FC = 500

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.convs, (c, h, w) = pooled_conv_stack(image_input(config, self.min_side()), self.CHANNELS, self.KERNELS)
        self.fcs = nn.ModuleList([SubnetLinear(c * h * w, self.FC)])  # 50·4·4 = 800 for 28x28
        self.feature_dim = self.FC

    @classmethod
    def min_side(cls) -> int:
        """Smallest image side the net takes (16)."""
        return pooled_min_side(cls.KERNELS)

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        biases = self.biases(task)
        h = x  # (B, C, H, W)
        for conv, bias in zip(self.convs, biases):
            h = F.max_pool2d(F.relu(shift(conv(h), bias)), 2)  # (B, C', H', W')
        h = h.flatten(1)  # (B, C'·H'·W')
        return F.relu(shift(self.fcs[0](h), biases[-1]))  # (B, 500)


class Conv4Net(WSNNet):
    """The TinyImageNet net: 4 convs of 160 channels (3x3, stride 2, padding 1) + ReLU, then
    fc 2560 -> 640 -> 640 + ReLU (2560 = 160·4·4 for 64x64 inputs); no BatchNorm."""

    CHANNELS = 160
    N_CONVS = 4
    FC = (640, 640)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c, h, w = image_input(config, self.min_side())
        convs = []
        for _ in range(self.N_CONVS):
            convs.append(SubnetConv2d(c, self.CHANNELS, 3, stride=2, padding=1))
            c, h, w = self.CHANNELS, convs[-1].out_side(h), convs[-1].out_side(w)
        self.convs = nn.ModuleList(convs)
        sizes = [c * h * w, *self.FC]
        self.fcs = nn.ModuleList(SubnetLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.feature_dim = sizes[-1]

    @classmethod
    def min_side(cls) -> int:
        """Padded stride-2 convs take any image: every side >= 1 leaves >= 1 (ceil(side / 2))."""
        return 1

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        biases = self.biases(task)
        h = x  # (B, C, H, W)
        for conv, bias in zip(self.convs, biases):
            h = F.relu(shift(conv(h), bias))  # (B, 160, ceil(H/2), ceil(W/2))
        h = h.flatten(1)  # (B, 160·H'·W')
        for fc, bias in zip(self.fcs, biases[len(self.convs) :]):
            h = F.relu(shift(fc(h), bias))  # (B, 640)
        return h
