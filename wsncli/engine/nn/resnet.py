"""The reduced ResNet-18 of the continual-learning literature (GPM, WSN), every conv masked.

BasicBlocks [2, 2, 2, 2] of widths nf·(1, 2, 4, 8); a 3x3 stem, stride 1 for images up to 32 a
side and stride 2 for larger ones (64x64, 84x84); bias-free masked 3x3 convs and 1x1 projection
shortcuts, each followed by its task's BatchNorm; adaptive average pooling to 2x2, so the feature
vector has 8·nf·4 values (640 for nf = 20) whatever the input size.

BatchNorm has no affine parameters and keeps running statistics per task: a task's outputs depend
only on its own statistics. (The official code normalises with the test batch's statistics, which
makes a task's outputs depend on whatever else is in the batch and on later tasks' data.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsncli.engine.limits import MAX_WIDTH
from wsncli.engine.nn.base import ModelConfig, WSNNet, image_input, shift
from wsncli.engine.nn.subnet import SubnetConv2d
from wsncli.errors import UsageError

DEFAULT_WIDTH = 20
BLOCKS = (2, 2, 2, 2)
POOLED_SIDE = 2  # adaptive average pooling to 2x2
STRIDED_STEM_ABOVE = 32  # the stem strides by 2 when both sides exceed this


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (or its 1x1 masked projection + BN), then ReLU.

    Its convs use the task's norms (and biases) first_norm, first_norm + 1 (and + 2 for the shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, first_norm: int) -> None:
        super().__init__()
        self.conv1 = SubnetConv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = SubnetConv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut: SubnetConv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = SubnetConv2d(in_channels, out_channels, 1, stride=stride)
        self.first_norm = first_norm

    def forward(self, x: torch.Tensor, norms: nn.ModuleList, biases: list) -> torch.Tensor:
        i = self.first_norm
        h = F.relu(shift(norms[i](self.conv1(x)), biases[i]))  # (B, out, H', W')
        h = shift(norms[i + 1](self.conv2(h)), biases[i + 1])  # (B, out, H', W')
        if self.shortcut is None:
            return F.relu(h + x)
        return F.relu(h + shift(norms[i + 2](self.shortcut(x)), biases[i + 2]))  # (B, out, H', W')


class ResNet18(WSNNet):
    """Masked reduced ResNet-18; layer names conv1, layer{1..4}.{0,1}.conv{1,2}, layer{2..4}.0.shortcut.

    The task's norms are a list with one BatchNorm per masked conv, in `subnet_layers()` order.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        nf = DEFAULT_WIDTH if config.width is None else config.width
        if not 1 <= nf <= MAX_WIDTH:
            raise UsageError(f"--width must be 1..{MAX_WIDTH} for arch resnet18, got {nf}")
        c, h, w = image_input(config, self.min_side())
        self.width = nf
        self.stem_stride = 2 if min(h, w) > STRIDED_STEM_ABOVE else 1
        self.conv1 = SubnetConv2d(c, nf, 3, stride=self.stem_stride, padding=1)
        n_norms, in_ch = 1, nf
        for stage, n_blocks in enumerate(BLOCKS):
            out_ch = nf * 2**stage
            blocks = []
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, n_norms))
                n_norms += 2 if blocks[-1].shortcut is None else 3
                in_ch = out_ch
            setattr(self, f"layer{stage + 1}", nn.ModuleList(blocks))
        self.feature_dim = in_ch * POOLED_SIDE * POOLED_SIDE  # 8·nf·4

    @staticmethod
    def final_side(side: int, stem_stride: int = 1) -> int:
        """Side of layer4's output for an input side: the stem, then three stride-2 stages."""
        side = (side - 1) // stem_stride + 1
        for _ in BLOCKS[1:]:
            side = (side - 1) // 2 + 1  # 3x3, padding 1, stride 2: ceil(side / 2)
        return side

    @classmethod
    def min_side(cls) -> int:
        """Smallest side whose layer4 output is at least 2x2, the pooled size (9)."""
        side = 1
        while cls.final_side(side) < POOLED_SIDE:
            side += 1
        return side

    def blocks(self) -> list[BasicBlock]:
        return [block for stage in range(len(BLOCKS)) for block in getattr(self, f"layer{stage + 1}")]

    def _make_norms(self) -> nn.ModuleList:
        return nn.ModuleList(
            nn.BatchNorm2d(layer.weight.shape[0], affine=False) for layer in self.subnet_layers().values()
        )

    def trunk(self, x: torch.Tensor, task: int) -> torch.Tensor:
        norms, biases = self.task_norms[str(task)], self.biases(task)
        h = F.relu(shift(norms[0](self.conv1(x)), biases[0]))  # (B, nf, H', W')
        for block in self.blocks():
            h = block(h, norms, biases)  # (B, nf·2^stage, H'', W'')
        h = F.adaptive_avg_pool2d(h, POOLED_SIDE)  # (B, 8nf, 2, 2)
        return h.flatten(1)  # (B, 32nf)
