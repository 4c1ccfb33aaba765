"""A masked layer's training step on the C kernels (CPU, float32), in one of two forms.

- Adam attached (training.optim.MaskedAdam): the masked weight is an autograd leaf, in buffers kept for
  the whole task. The backward only leaves its gradient in `leaf.grad` (no Python between the layers).
  The optimizer's step then makes one pass per layer (nn.adam's kernel): both straight-through
  gradients, Adam's update of weight, scores and moments, and the next step's mask and masked weight
  for every entry outside the selection band, while it scans the new scores for the band. The next
  forward's selection finds the threshold among the band's few values and sets only their entries.
  A change of weight or scores by anything else (their version counters) makes the next forward
  select from scratch.
- no Adam attached (data-parallel runs, where DDP must see the parameters' gradients; tests): a custom
  autograd function with the same selection whose backward writes both gradients in one pass.

Both give the bits of the torch path (nn.subnet._MaskedWeight, nn.adam.adam_reference).
"""

from __future__ import annotations

import math

import torch

from wsncli.engine.nn.adam import LayerAdam
from wsncli.engine.nn.selection import TopKSelector, fused_grads


class _FusedMaskedWeight(torch.autograd.Function):
    """weight ⊙ mask(|score|), selection and product in one C pass; backward: both straight-through
    gradients in one C pass (the same bits as nn.subnet._MaskedWeight)."""

    @staticmethod
    def forward(ctx, weight, scores, fused):
        ctx.fused, ctx.threads = fused, torch.get_num_threads()
        n = weight.numel()
        ctx.mask, w_eff = fused.select(torch.empty(n, dtype=torch.bool), torch.empty(n), ctx.threads)
        ctx.save_for_backward(weight, scores)
        return w_eff.view(weight.shape)

    @staticmethod
    def backward(ctx, grad):
        weight, scores = ctx.saved_tensors
        gw, gs = fused_grads(grad.contiguous(), weight, scores, ctx.mask, ctx.fused.free, ctx.threads)
        return gw, gs, None


class FusedLayer:
    """The C kernels' state of one masked layer training a task: its selector, mask, scratch and
    masked-weight buffers, and (when attached) the optimizer's Adam state of its weight and scores."""

    def __init__(
        self, weight: torch.Tensor, scores: torch.Tensor, k: int, free: torch.Tensor | None, selector: TopKSelector
    ) -> None:
        n = weight.numel()
        self.weight, self.scores, self.k, self.free = weight, scores, k, free  # free: bool (n,) or None
        self.selector = selector
        self.work = torch.empty(n, dtype=torch.float32)  # the selection's scratch
        self.mask = torch.empty(n, dtype=torch.bool)  # the last selection's mask
        self.positions = torch.empty(n, dtype=torch.int32)  # the band's positions, from the Adam pass
        self.adam: LayerAdam | None = None
        self.leaf: torch.Tensor | None = None  # the masked weight (weight's shape), autograd leaf
        self._key: tuple[int, int, int] | None = None  # what the leaf was computed from
        self._updates = 0
        self._prescan: tuple[int, int, int] | None = None  # the Adam pass's band scan ...
        self._prescan_key: tuple[int, int, int] | None = None  # ... of the scores as they were then

    def select(self, mask: torch.Tensor, w_eff: torch.Tensor, threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The C selection of the current scores into mask and w_eff (flat); the mask is kept as the
        layer's last mask."""
        self.selector.fused_select(self.scores, self.weight, self.k, self.work, mask, w_eff, threads)
        if mask is not self.mask:
            self.mask = mask
        return mask, w_eff

    def attach(self, adam: LayerAdam | None) -> None:
        """Hand the update to `adam` (None: back to gradients on weight and scores)."""
        self.adam, self._key = adam, None
        self.leaf = None if adam is None else torch.empty_like(self.weight, requires_grad=True)

    def masked_weight(self) -> torch.Tensor:
        """weight ⊙ mask for this forward (weight's shape), differentiable as described above."""
        if self.adam is None:
            return _FusedMaskedWeight.apply(self.weight, self.scores, self)
        leaf = self.leaf
        key = (self.weight._version, self.scores._version, self._updates)
        if key != self._key:
            prescan = self._prescan if key == self._prescan_key else None  # else weight or scores changed since
            self.selector.fused_select(
                self.scores,
                self.weight,
                self.k,
                self.work,
                self.mask,
                leaf.detach().view(-1),
                torch.get_num_threads(),
                prescan,
                self.positions,
            )
            torch.autograd.graph.increment_version(leaf)  # a graph that saved the old values cannot backward
            self._key = key
        return leaf

    def step(self) -> bool:
        """Adam's update from the masked weight's gradient, if the backward left one; True if done."""
        grad = None if self.leaf is None else self.leaf.grad
        if grad is None:
            return False
        lo, hi = self.selector.lo, self.selector.hi
        if lo is None or hi is None:  # no band yet: an empty one, so the next selection is a full one
            lo = hi = math.inf
        w_eff = self.leaf.detach().view(-1)  # type: ignore[union-attr]
        self._prescan = self.adam.fused_update(  # type: ignore[union-attr]
            self.weight,
            self.scores,
            self.free,
            torch.get_num_threads(),
            grad=grad.contiguous(),
            mask=self.mask,
            next_step=(w_eff, lo, hi, self.work, self.positions),
        )
        self.leaf.grad = None  # type: ignore[union-attr]
        self._updates += 1
        self._prescan_key = (self.weight._version, self.scores._version, self._updates)
        return True
