"""Dropout whose masks do not depend on how a batch is split over processes, nor on a restart.

In training, `training.loop` gives every dropout layer a `DropoutDraw`: a generator re-seeded at
each epoch from (seed, task, epoch), and the global batch this process holds a part of. Each layer
draws the mask of the whole global batch, (total, *features), and applies the rows of this process's
part; every process draws the same numbers in the same order. So a data-parallel run applies the
masks of the one-process run, and a run resumed after epoch e draws what the uninterrupted run drew.
Without a draw (a model used outside the loop) a layer is plain `F.dropout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DropoutDraw:
    """Where a step's dropout masks come from: `generator`, and this process's rows start..start+b
    of a global batch of `total` samples."""

    generator: torch.Generator
    total: int = 0
    start: int = 0


def dropout_seed(seed: int, task: int, epoch: int) -> int:
    """The dropout generator's seed for one epoch of one task (the same in every process)."""
    return (seed * 1_000_003 + task * 10_007 + epoch * 7_919 + 0x5EED) % (2**63)


class BatchDropout(nn.Module):
    """Inverted dropout with probability p; its mask comes from the layer's `draw` when set."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.draw: DropoutDraw | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        draw = self.draw
        if draw is None:
            return F.dropout(x, self.p, training=True)
        uniform = torch.rand((draw.total, *x.shape[1:]), generator=draw.generator, device=x.device)  # (total, ...)
        keep = uniform[draw.start : draw.start + x.shape[0]] >= self.p  # (b, ...): this process's rows
        return x * (keep.to(x.dtype) * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_draw(model: nn.Module, draw: DropoutDraw | None) -> None:
    """Give every BatchDropout layer of `model` the draw (None: plain dropout again)."""
    for module in model.modules():
        if isinstance(module, BatchDropout):
            module.draw = draw
