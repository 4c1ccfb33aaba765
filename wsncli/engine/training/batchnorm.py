"""Precise BatchNorm: a task's running statistics recomputed exactly over its training split.

Running statistics kept during training are a momentum average (0.1) over the last few hundred
steps; a small task has only a handful, so its statistics stay near their initial values and the
network evaluates at chance (docs/RESULTS.md section 6). `recompute_statistics` replaces them, after
every epoch and before validation, by the exact mean and variance of each BatchNorm's input over
the whole training split, in one pass with the current weights (as pycls / Detectron2's PreciseBN):

- the network runs in eval mode (no dropout) on the split's network inputs, in order, in batches of
  the training batch size; each BatchNorm of this task normalises with its batch's statistics, as in
  training, so the layers after it see what they were trained on;
- every BatchNorm's input is accumulated per channel as a per-sample (per-value) average: each
  batch's mean and variance (in the activations' dtype), merged across batches in float64 by Chan's
  pairwise update of count, mean and sum of squared deviations, so an uneven last batch weighs by
  its size, not as a whole batch (torch's `momentum=None` would weigh batches equally); the variance
  is stored with Bessel's correction, as torch's running_var is;
- only `model.task_norms[task]` is read or written (other tasks' statistics, weights, scores and
  heads are untouched), and no collective runs: under data-parallel training every process holds
  the whole training split and computes the same statistics on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsncli.engine.nn.base import WSNNet


class _Moments:
    """Per-channel count, mean and sum of squared deviations, float64, merged batch by batch."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        n = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x.detach(), dim=dims, correction=0)  # (C,), (C,): this batch, in x's dtype
        mean, m2 = mean.to(torch.float64), var.to(torch.float64) * n
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def variance(self) -> torch.Tensor:
        if self.m2 is None:
            raise RuntimeError("internal error: no batch was recorded")
        return self.m2 / max(self.count - 1, 1)


def _batch_normalised(moments: _Moments):
    """A forward hook: record the BatchNorm's input, return it normalised by its batch statistics."""

    def hook(module: nn.modules.batchnorm._BatchNorm, args: tuple, _output: torch.Tensor) -> torch.Tensor:
        x = args[0]  # (B, C) or (B, C, H, W)
        moments.add(x)
        return F.batch_norm(x, None, None, module.weight, module.bias, training=True, eps=module.eps)

    return hook


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch; a last batch of one sample joins the one before (a BatchNorm of
    one value per channel has no batch variance). Training and this pass both batch this way."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


@torch.no_grad()
def recompute_statistics(model: WSNNet, task: int, split, batch_size: int) -> bool:
    """Set task's BatchNorm running statistics to their exact values over `split` (a DeviceSplit of
    the task's training data); the model is left in eval mode. Returns False when there is nothing to
    do (no BatchNorm, or fewer than two samples)."""
    norms = model.task_norms[str(task)] if str(task) in model.task_norms else None
    if norms is None or len(norms) == 0 or len(split) < 2:
        return False
    model.eval()
    moments = [_Moments() for _ in norms]
    hooks = [norm.register_forward_hook(_batch_normalised(m)) for norm, m in zip(norms, moments)]
    try:
        for start, end in batch_bounds(len(split), batch_size):
            model.trunk(split.inputs(split.x[start:end]), task)
    finally:
        for hook in hooks:
            hook.remove()
    for norm, m in zip(norms, moments):
        if m.mean is None:  # a BatchNorm this forward never reached: keep what it has
            continue
        norm.running_mean.copy_(m.mean.to(norm.running_mean.dtype))
        norm.running_var.copy_(m.variance().to(norm.running_var.dtype))
    return True
