"""Subnetwork layers: a learned score per weight, a per-layer top-c mask, straight-through gradients.

Three modes per layer:
- `train_subnet(k, frozen)`: every forward picks the k weights of largest |score| (exact, ties by
  flat index); weights and scores get straight-through gradients, frozen weights get none.
- `use_mask(mask)`: inference with a stored mask; the masked weight is computed once and cached.
- `train_dense()` / `dense()`: the plain network (the fine-tune baseline), every weight trains.

The selection: on CUDA (or with `static_selection`) the static radix select, free of host
synchronisation (tests/engine/test_sync_free.py); on the CPU the band selector, fused with the mask
products in the C kernels where they are built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wsncli.engine.nn.adam import LayerAdam
from wsncli.engine.nn.fused import FusedLayer
from wsncli.engine.nn.selection import TopKSelector, kernels_available, static_topk_mask
from wsncli.engine.nn.selection import exact_top_k as exact_top_k  # re-exported for callers of 0.1
from wsncli.engine.nn.selection import k_for_capacity as k_for_capacity


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

    def _init_parameters(self, keep_weight: bool = False) -> None:
        if not keep_weight:  # a user's layer (nn.masking) keeps its own weights
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))
        self.selector = TopKSelector()
        self.static_selection = False  # the device path's selection on any device (set_static_selection)
        self.mode = "dense"
        self.k = self.weight.numel()
        self._free_f: torch.Tensor | None = None
        self._free: torch.Tensor | None = None  # bool (n,): ~frozen, for the fused kernel
        self.fixed_mask: torch.Tensor | None = None
        self._cached_weight: torch.Tensor | None = None
        self._torch_mask: torch.Tensor | None = None  # the torch path's last mask
        self.fused: FusedLayer | None = None  # train_subnet's choice: the C kernels run this layer's step

    # modes ---------------------------------------------------------------------------------
    def train_subnet(self, k: int, frozen: torch.Tensor | None) -> None:
        self.mode, self.k = "subnet", k
        self._free_f = None if frozen is None else (~frozen).to(self.weight.dtype)  # 1 where trainable
        self._free = None if frozen is None else (~frozen).reshape(-1).contiguous()
        self.fixed_mask = self._cached_weight = self._torch_mask = None
        self.selector.reset()
        w = self.weight
        kernels = kernels_available() and not self.static_selection and w.device.type == "cpu"
        kernels = kernels and w.dtype == torch.float32 and 0 < k < w.numel()
        kernels = kernels and w.is_contiguous() and self.scores.is_contiguous()
        self.fused = FusedLayer(w, self.scores, k, self._free, self.selector) if kernels else None

    def attach_adam(self, adam: LayerAdam | None) -> None:
        """Let the optimizer's Adam state of this layer take over its update (nn.fused)."""
        if self.fused is None:
            raise RuntimeError("internal error: Adam attached to a layer not trained by the C kernels")
        self.fused.attach(adam)

    def use_mask(self, mask: torch.Tensor) -> None:
        self.mode, self.fixed_mask, self._cached_weight, self.fused = "fixed", mask, None, None

    def dense(self) -> None:
        self.mode, self.fixed_mask, self._cached_weight, self.fused = "dense", None, None, None

    @property
    def _last_mask(self) -> torch.Tensor | None:
        """The mask of the last training forward (bool, weight's shape)."""
        if self.fused is not None:
            return self.fused.mask.view(self.weight.shape)
        return self._torch_mask

    # masks ---------------------------------------------------------------------------------
    def current_mask(self) -> torch.Tensor:
        """The top-k mask of the current scores (bool, weight shape)."""
        flat = self.scores.detach().abs().reshape(-1)  # (n,)
        if flat.is_cuda or self.static_selection:
            return static_topk_mask(flat, self.k).view_as(self.weight)
        return self.selector.select(flat, self.k).view_as(self.weight)

    def _fused(self) -> bool:
        """The C kernels run this layer's step (chosen by train_subnet; still on the CPU)."""
        return self.fused is not None and not self.static_selection and self.weight.is_cpu

    def effective_weight(self) -> torch.Tensor:
        if self.mode == "dense":
            return self.weight
        if self.mode == "fixed":
            if self._cached_weight is None:
                zero = torch.zeros((), dtype=self.weight.dtype, device=self.weight.device)
                self._cached_weight = torch.where(self.fixed_mask, self.weight.detach(), zero)
            return self._cached_weight
        if self._fused():
            return self.fused.masked_weight()  # type: ignore[union-attr]
        mask = self._torch_mask = self.current_mask()
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

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0
    ) -> None:
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


def set_static_selection(model: nn.Module, on: bool = True) -> None:
    """Make every masked layer of `model` select as on CUDA (the static, sync-free radix select, no C
    kernels, and torch's Adam: training.optim) on any device: the CPU then runs the device path. Call it
    before train_subnet."""
    for module in model.modules():
        if isinstance(module, SubnetLayer):
            module.static_selection = on
