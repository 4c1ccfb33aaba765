"""Adam for the masked layers' weights and scores, fusable into the training step.

One definition of the update, two implementations with the same bits (tests/engine/test_adam.py):
- `adam_reference`: torch operations, one tensor at a time (the CPU step without the C kernels);
- `fused_update` (the C kernel `_kernels.adam`): a layer's weight and scores in one pass, either from
  the gradient of the masked weight, inside the layer's backward (the straight-through gradients are
  formed in registers and never stored), or from given gradients (after a data-parallel all-reduce).

For step t of a parameter (its count is incremented first), with float32 constants b1 = beta1,
1 - beta1, b2 = beta2, 1 - beta2, c2 = 1/sqrt(1 - beta2^t), eps and lr_t = lr/(1 - beta1^t):

    m <- flush(m*b1 + g*(1-b1));   v <- flush(v*b2 + (g*g)*(1-b2));   p <- p - (m / (sqrt(v)*c2 + eps)) * lr_t

every operation rounded to float32 on its own (no FMA), in this order; `flush` stores a moment below
the smallest normal float32 (1.2e-38) as 0. The moments of weights outside the mask decay by 0.9 and
0.999 per step; without the flush they spend ~150 steps each as subnormal numbers, which the CPU
computes ~100x slower (measured: the whole step 2x slower after 1,000 steps at PMNIST's batch 10).
Weights frozen by earlier tasks are never written, nor are their moments. It is Adam (Kingma & Ba;
torch's defaults, no weight decay), rounded differently from torch.optim.Adam's fused kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from wsncli.engine.nn.selection import _kernels

FLT_MIN = torch.finfo(torch.float32).tiny  # the smallest normal float32


@dataclass(frozen=True)
class AdamSettings:
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def _f32(x: float) -> float:
    """x rounded to the nearest float32 (what the kernel's (float) cast gives)."""
    return float(np.float32(x))


def adam_constants(step: float, hp: AdamSettings) -> tuple[float, float, float, float, float, float, float]:
    """(b1, 1-b1, b2, 1-b2, c2, eps, lr_t) as float32 values for step `step` (after its increment).
    The kernel computes the same in C: the same double operations and the same libm pow and sqrt."""
    bc1, bc2 = 1.0 - hp.beta1**step, 1.0 - hp.beta2**step
    values = (hp.beta1, 1.0 - hp.beta1, hp.beta2, 1.0 - hp.beta2, 1.0 / math.sqrt(bc2), hp.eps, hp.lr / bc1)
    return tuple(_f32(v) for v in values)  # type: ignore[return-value]


def new_state(param: torch.Tensor) -> dict[str, torch.Tensor]:
    """A parameter's Adam state as torch.optim.Adam keeps it: step (float32, 0-d) and both moments."""
    return {
        "step": torch.zeros((), dtype=torch.float32),
        "exp_avg": torch.zeros_like(param, memory_format=torch.contiguous_format),
        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.contiguous_format),
    }


def exact_sqrt(v: torch.Tensor) -> torch.Tensor:
    """IEEE sqrt of float32 v (correctly rounded: what C's sqrtf gives). torch's float32 sqrt on the CPU
    may use MKL's vector sqrt, within one ulp but not always the nearest float (0.6% of random floats
    here). Taken in float64 and rounded to float32 it is exact: a square root of a float32 lies at
    least 8 float64 ulps from any midpoint between two float32 (v - m^2 is a nonzero multiple of
    m's grid squared), so an error of one float64 ulp cannot change the rounding."""
    return v.double().sqrt_().float()  # (n,)


def flush(x: torch.Tensor) -> torch.Tensor:
    """x (float32) with every entry below the smallest normal float32 in magnitude set to +0 (NaN kept),
    in place, on the bits (torch's masked_fill and where with a bool mask are 10-40x slower on the CPU)."""
    bits = x.view(torch.int32)
    tiny = ((bits & 0x7FFFFFFF) - 0x00800000) >> 31  # all ones where |x| < FLT_MIN, else 0
    bits &= ~tiny
    return x


def blend(keep: torch.Tensor, updated: torch.Tensor, current: torch.Tensor) -> None:
    """current = updated where keep (int32: all ones) else current, bit for bit, in place."""
    bits = current.view(torch.int32)
    bits ^= (bits ^ updated.view(torch.int32)) & keep


@torch.no_grad()
def adam_reference(
    param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], hp: AdamSettings, free=None
) -> None:
    """One Adam step of `param` in torch operations, as defined above; `free` (bool, param's shape):
    only those elements (and their moments) are written."""
    state["step"] += 1
    b1, omb1, b2, omb2, c2, eps, lr_t = adam_constants(float(state["step"]), hp)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m1 = flush((m * b1).add_(grad * omb1))
    v1 = flush((v * b2).add_((grad * grad).mul_(omb2)))
    p1 = torch.sub(param, (m1 / exact_sqrt(v1).mul_(c2).add_(eps)).mul_(lr_t))
    keep = None if free is None else -free.to(torch.int32)  # all ones where free
    for updated, current in ((p1, param), (m1, m), (v1, v)):
        if keep is None:
            current.copy_(updated)
        else:
            blend(keep, updated, current)  # frozen entries keep their bits


class LayerAdam:
    """Adam's state of one masked layer's weight and scores: the optimizer's own state tensors, seen
    by the layer's backward. `armed`: the next backward applies the update itself (set by the
    optimizer's zero_grad, cleared by that backward or by the optimizer's step)."""

    def __init__(self, weight_state: dict, scores_state: dict, hp: AdamSettings) -> None:
        self.weight_state, self.scores_state, self.hp = weight_state, scores_state, hp
        self.armed = False
        parts = (
            weight_state["exp_avg"],
            weight_state["exp_avg_sq"],
            scores_state["exp_avg"],
            scores_state["exp_avg_sq"],
            weight_state["step"],
            scores_state["step"],
        )
        for t in parts:
            if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
                raise ValueError("Adam state of a masked layer must be contiguous float32 on the CPU")
        self._pointers = tuple(t.data_ptr() for t in parts)  # fixed while these tensors live

    def fused_update(
        self,
        weight: torch.Tensor,
        scores: torch.Tensor,
        free: torch.Tensor | None,
        threads: int,
        grad: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        grad_weight: torch.Tensor | None = None,
        grad_scores: torch.Tensor | None = None,
        next_step: tuple[torch.Tensor, float, float, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[int, int, int] | None:
        """The C kernel, from (grad of w_eff, mask) or from (grad_weight, grad_scores); all contiguous
        float32 (mask, free: bool) CPU tensors. With the first, `next_step` = (w_eff, lo, hi, work,
        positions): the pass also writes the next step's mask and w_eff, right outside the band
        (lo, hi], and scans the new scores for the band (nn.selection.fused_select's `prescan`):
        returns (band, above, nonfinite)."""
        hp = self.hp
        w_eff, lo, hi, work, positions = next_step or (None, 0.0, 0.0, None, None)
        return _kernels.adam(
            0 if grad is None else grad.data_ptr(),
            0 if mask is None else mask.data_ptr(),
            0 if grad_weight is None else grad_weight.data_ptr(),
            0 if grad_scores is None else grad_scores.data_ptr(),
            0 if free is None else free.data_ptr(),
            weight.numel(),
            weight.data_ptr(),
            scores.data_ptr(),
            *self._pointers,
            hp.lr,
            hp.beta1,
            hp.beta2,
            hp.eps,
            threads,
            0 if w_eff is None else w_eff.data_ptr(),
            lo,
            hi,
            0 if work is None else work.data_ptr(),
            0 if positions is None else positions.data_ptr(),
        )
