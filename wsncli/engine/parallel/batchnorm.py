"""BatchNorm over the whole global batch when every process holds a part of it (gloo, the CPU).

torch's SyncBatchNorm runs on CUDA only, so on the CPU each BatchNorm layer of the task is replaced,
while the task trains, by a `GroupBatchNorm` sharing its running-statistics tensors. In the training
step's forward (training mode, autograd on) it normalises with the statistics of the global batch:
each process computes the mean and the sum of squared deviations of its part per channel, one
all-reduce gathers them, and Chan's formula combines them (as SyncBatchNorm does on CUDA). The
all-reduce is differentiable (its backward all-reduces the gradients), so the gradients are those
of the one-process run up to reduction order. Any other forward (evaluation, or a pass without
autograd such as recomputing the running statistics over the training split) is the plain layer's.

The running statistics are updated as torch does (`momentum`, or a cumulative average when it is
None) from the global batch's mean and unbiased variance, so they stay identical on every process;
whatever later overwrites them (a recomputation after the epoch) is kept, the tensors being shared.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class Split(Protocol):
    """How the global batch in training is split: what `shard.Shard` provides."""

    batch_size: int  # samples of the global batch being trained on

    def part_sizes(self, n: int) -> list[int]: ...  # every process's samples of a global batch of n


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GroupBatchNorm(_BatchNorm):
    """A BatchNorm1d/2d (no affine parameters) whose training step normalises with the global
    batch's statistics; `split` says how that batch is split over the processes."""

    def __init__(self, original: _BatchNorm, split: Split) -> None:
        super().__init__(original.num_features, original.eps, original.momentum, original.affine, True)
        if original.affine or not original.track_running_stats:
            raise ValueError("GroupBatchNorm takes BatchNorm layers without affine parameters and with running stats")
        self.running_mean, self.running_var = original.running_mean, original.running_var  # shared
        self.num_batches_tracked = original.num_batches_tracked
        self.training = original.training
        self.split = split

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        spatial = math.prod(x.shape[2:])
        counts = [size * spatial for size in self.split.part_sizes(self.split.batch_size)]  # values per process
        total = sum(counts)
        if total <= 1:  # what F.batch_norm refuses in one process
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        rank, world = dist.get_rank(), len(counts)
        local_mean = x.sum(dims) / max(counts[rank], 1)  # (C,); 0 for an empty part
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_m2 = (x - local_mean.view(shape)).square().sum(dims)  # (C,): squared deviations
        row = torch.stack([local_mean, local_m2])[None]  # (1, 2, C)
        gathered = _AllReduceSum.apply(F.pad(row, (0, 0, 0, 0, rank, world - rank - 1)))  # (W, 2, C): every row
        weights = torch.tensor(counts, dtype=x.dtype, device=x.device)[:, None]  # (W, 1)
        mean = (gathered[:, 0] * weights).sum(0) / total  # (C,)
        m2 = (gathered[:, 1] + weights * (gathered[:, 0] - mean).square()).sum(0)  # (C,), Chan's formula
        var = m2 / total  # biased, for normalising
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = (1.0 / self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
            self.running_var.mul_(1 - factor).add_(factor * m2.detach() / (total - 1))
        return (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)


def convert(norms: nn.ModuleList, split: Split) -> nn.ModuleList:
    """A ModuleList with every BatchNorm of `norms` replaced by a GroupBatchNorm sharing its buffers."""
    return nn.ModuleList(GroupBatchNorm(m, split) if isinstance(m, _BatchNorm) else m for m in norms)
