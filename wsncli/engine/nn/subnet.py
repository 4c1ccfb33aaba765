"""Subnetwork layers: a learned score per weight, a per-layer top-c mask, straight-through gradients.

Three modes per layer:
- `train_subnet(k, frozen)`: every forward picks the k weights of largest |score| (exact, ties by
  flat index); weights and scores get straight-through gradients, frozen weights get none.
- `use_mask(mask)`: inference with a stored mask; the masked weight is computed once and cached.
- `train_dense()` / `dense()`: the plain network (the fine-tune baseline), every weight trains.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_MIN_BAND = 64  # target size of the candidate band around the threshold


def k_for_capacity(n: int, capacity: float) -> int:
    """Number of weights a mask keeps in a layer of n weights: exactly round(c·n)."""
    return int(round(capacity * n))


def exact_top_k(values: torch.Tensor, k: int, threshold: torch.Tensor) -> torch.Tensor:
    """Bool mask of exactly k entries: values > threshold, then ties == threshold by flat index."""
    mask = values >= threshold  # (n,)
    if int(mask.sum()) == k:  # the usual case: no tie at the threshold
        return mask
    mask = values > threshold
    missing = k - int(mask.sum())
    ties = values == threshold
    tie_rank = torch.cumsum(ties, 0)  # 1-based rank of each tie in index order
    return mask | (ties & (tie_rank <= missing))


class TopKSelector:
    """Exact top-k of a slowly changing vector without a sort per call.

    Keeps a band (lo, hi] around the last threshold; the k-th largest value is found among the few
    entries inside the band. When the band misses it (scores moved far), one full kthvalue recentres
    it and the band widens, so it settles at the width the per-step drift needs.
    """

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.width = 0.0
        self.ties = True
        self.full_selections = 0  # how often the fallback ran (tests and benchmarks read it)

    def reset(self) -> None:
        self.lo = self.hi = None
        self.width = 0.0

    def select(self, values: torch.Tensor, k: int) -> torch.Tensor:
        """values: (n,) non-negative; returns a bool mask (n,) with exactly k True."""
        n = values.numel()
        if k >= n:
            return torch.ones_like(values, dtype=torch.bool)
        if k <= 0:
            return torch.zeros_like(values, dtype=torch.bool)
        threshold = self._threshold_in_band(values, k)
        if threshold is None:
            threshold = self._full_threshold(values, k)
        elif not self.ties:
            return values >= threshold  # no tie at the threshold: exactly k entries
        return exact_top_k(values, k, threshold)

    def _threshold_in_band(self, values: torch.Tensor, k: int) -> torch.Tensor | None:
        if self.lo is None:
            return None
        over_lo = values > self.lo  # (n,)
        in_band = over_lo & (values <= self.hi)
        band = values[in_band]  # (m,)
        above = int(over_lo.sum()) - band.numel()  # entries over hi
        need = k - above  # the need-th largest inside the band is the threshold
        if need < 1 or need > band.numel():
            return None
        threshold = torch.kthvalue(band, band.numel() - need + 1).values
        if band.numel() > 64 * _MIN_BAND:
            self.width *= 0.9  # drift has slowed: a narrower band is cheaper
        t = float(threshold)
        self.lo, self.hi = t - self.width / 2, t + self.width / 2
        self.ties = int((band == threshold).sum()) > 1
        return threshold

    def _full_threshold(self, values: torch.Tensor, k: int) -> torch.Tensor:
        self.full_selections += 1
        n = values.numel()
        threshold = torch.kthvalue(values, n - k + 1).values
        t = float(threshold)
        self.width = max(2.0 * self.width, abs(t) * 0.02, 1e-12)
        self.lo, self.hi = t - self.width / 2, t + self.width / 2
        return threshold


class _MaskedWeight(torch.autograd.Function):
    """weight ⊙ mask(|score|); d/dweight is masked.

    Straight-through: the mask is a step function of |score|, so d(mask)/d|score| is taken as 1 and
    d/dscore = grad ⊙ weight ⊙ sign(score). Without the sign, a negative score would be pushed the
    wrong way: out of the mask when the loss wants its weight kept.
    """

    @staticmethod
    def forward(ctx, weight, scores, mask_f, trainable_f):  # all the layer's weight shape
        ctx.save_for_backward(weight, scores, trainable_f)
        return weight * mask_f

    @staticmethod
    def backward(ctx, grad):
        weight, scores, trainable_f = ctx.saved_tensors
        return grad * trainable_f, (grad * weight).mul_(scores.sign()), None, None  # one temporary, same bits


class SubnetLayer(nn.Module):
    """Shared machinery of masked layers; subclasses define `_apply_weight(x, w)`."""

    weight: nn.Parameter
    scores: nn.Parameter

    def _init_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))
        self.selector = TopKSelector()
        self.mode = "dense"
        self.k = self.weight.numel()
        self.frozen: torch.Tensor | None = None  # bool, weight shape: weights earlier tasks use
        self._free_f: torch.Tensor | None = None
        self.fixed_mask: torch.Tensor | None = None
        self._cached_weight: torch.Tensor | None = None
        self._last_mask: torch.Tensor | None = None

    # modes ---------------------------------------------------------------------------------
    def train_subnet(self, k: int, frozen: torch.Tensor | None) -> None:
        self.mode, self.k = "subnet", k
        self.frozen = frozen
        self._free_f = None if frozen is None else (~frozen).to(self.weight.dtype)  # 1 where trainable
        self.fixed_mask = self._cached_weight = None
        self.selector.reset()

    def use_mask(self, mask: torch.Tensor) -> None:
        self.mode, self.fixed_mask, self._cached_weight = "fixed", mask, None

    def dense(self) -> None:
        self.mode, self.fixed_mask, self._cached_weight = "dense", None, None

    # masks ---------------------------------------------------------------------------------
    def current_mask(self) -> torch.Tensor:
        """The top-k mask of the current scores (bool, weight shape)."""
        flat = self.scores.detach().abs().reshape(-1)  # (n,)
        return self.selector.select(flat, self.k).view_as(self.weight)

    def effective_weight(self) -> torch.Tensor:
        if self.mode == "dense":
            return self.weight
        if self.mode == "fixed":
            if self._cached_weight is None:
                zero = torch.zeros((), dtype=self.weight.dtype, device=self.weight.device)
                self._cached_weight = torch.where(self.fixed_mask, self.weight.detach(), zero)
            return self._cached_weight
        mask = self.current_mask()
        self._last_mask = mask
        mask_f = mask.to(self.weight.dtype)
        trainable_f = mask_f if self._free_f is None else mask_f * self._free_f
        return _MaskedWeight.apply(self.weight, self.scores, mask_f, trainable_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_weight(x, self.effective_weight())


class SubnetLinear(SubnetLayer):
    """Linear layer without bias, weight (out, in), with a score per weight."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.scores = nn.Parameter(torch.empty(out_features, in_features))
        self._init_parameters()

    def _apply_weight(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)  # (B, in) -> (B, out)


class SubnetConv2d(SubnetLayer):
    """Conv2d without bias, weight (out, in, k, k), square stride and zero padding, a score per weight."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.scores = nn.Parameter(torch.empty(shape))
        self.stride, self.padding = stride, padding
        self._init_parameters()

    def out_side(self, side: int) -> int:
        """Output height (or width) for an input of that side."""
        return (side + 2 * self.padding - self.weight.shape[-1]) // self.stride + 1

    def _apply_weight(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, stride=self.stride, padding=self.padding)  # (B, C, H, W) -> (B, out, H', W')
