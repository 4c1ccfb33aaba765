"""The per-layer top-c selection: round(c·n) weights of largest |score|, ties by lower flat index.

One definition, three implementations that give the same mask for the same scores:
- `TopKSelector.select`: torch operations with a band around the last threshold (no sort per step;
  the k-th value is found among the few entries near it), used on the CPU without the fused kernel;
- `fused_select` (the C kernel `_kernels.select`): the same band search, then the mask and the masked
  weight in one pass, on the CPU;
- `static_topk_mask`: no host synchronisation and static shapes (a two-pass radix select on the
  float bits, ties by index with a cumulative sum), for CUDA and graph capture; a layer uses it on the
  CPU too when told to (`subnet.set_static_selection`), which is how tests/engine/test_sync_free.py
  runs the device path on the CPU under a mode that fails on every operation that needs the host.
"""

from __future__ import annotations

import os

import torch

try:  # built by `pip install` where a C compiler exists; wsn works without it
    from wsncli.engine.nn import _kernels
except ImportError:  # pragma: no cover - depends on the machine
    _kernels = None

_MIN_BAND = 16  # target size of the candidate band around the threshold


class NonFiniteScores(ValueError):
    """Scores that are NaN or infinite: no mask of round(c·n) can be defined."""


def k_for_capacity(n: int, capacity: float) -> int:
    """Number of weights a mask keeps in a layer of n weights: exactly round(c·n)."""
    return int(round(capacity * n))


def kernels_available() -> bool:
    """The fused C kernels are built and not switched off ($WSN_KERNELS=torch)."""
    return _kernels is not None and os.environ.get("WSN_KERNELS", "") != "torch"


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
    entries inside the band. When the band misses it (scores moved far), one full selection
    recentres it and the band widens, so it settles at the width the per-step drift needs.
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

    def _centre(self, t: float, band_size: int) -> None:
        if band_size > 64 * _MIN_BAND:
            self.width *= 0.9  # drift has slowed: a narrower band is cheaper
        self.lo, self.hi = t - self.width / 2, t + self.width / 2

    def _widen(self, t: float) -> None:
        self.full_selections += 1
        self.width = max(2.0 * self.width, abs(t) * 0.02, 1e-12)
        self.lo, self.hi = t - self.width / 2, t + self.width / 2

    def select(self, values: torch.Tensor, k: int) -> torch.Tensor:
        """values: (n,) non-negative; returns a bool mask (n,) with exactly k True."""
        n = values.numel()
        if k >= n:
            return torch.ones_like(values, dtype=torch.bool)
        if k <= 0:
            return torch.zeros_like(values, dtype=torch.bool)
        threshold = self._threshold_in_band(values, k)
        if threshold is None:
            threshold = torch.kthvalue(values, n - k + 1).values
            self._widen(float(threshold))
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
        self._centre(float(threshold), band.numel())
        self.ties = int((band == threshold).sum()) > 1
        return threshold

    def fused_select(
        self,
        scores: torch.Tensor,
        weight: torch.Tensor,
        k: int,
        work: torch.Tensor,
        mask: torch.Tensor,
        w_eff: torch.Tensor,
        threads: int = 1,
        prescan: tuple[int, int, int] | None = None,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, w_eff), flat, written by the C kernel into the given buffers (bool and float, n each;
        work: float, n): the same selection and band as `select`. `prescan`: (band, above, nonfinite)
        of the band scan the Adam kernel made of these scores, its values in work and their positions
        in `positions` (int32, n); mask and w_eff are then right outside the band and only it is set."""
        n = scores.numel()
        mode = 2 if prescan is not None else 1 if self.lo is not None else 0
        t, band, _ties, used_band, nonfinite = _kernels.select(
            scores.data_ptr(),
            weight.data_ptr(),
            n,
            k,
            self.lo if self.lo is not None else 0.0,
            self.hi if self.hi is not None else 0.0,
            mode,
            mask.data_ptr(),
            w_eff.data_ptr(),
            work.data_ptr(),
            threads,
            0 if positions is None else positions.data_ptr(),
            *(prescan or (0, 0, 0)),
        )
        if nonfinite:
            raise NonFiniteScores(f"{nonfinite} scores are NaN or infinite")
        if used_band:
            self._centre(t, band)
        else:
            self._widen(t)
        return mask, w_eff


def fused_grads(
    grad: torch.Tensor,
    weight: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    free: torch.Tensor | None,
    threads: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_weight, grad_scores) from the C kernel: grad·(mask & free) and (grad·weight)·sign(scores);
    grad contiguous, mask and free (None: nothing frozen) flat bool."""
    gw, gs = torch.empty_like(weight), torch.empty_like(scores)
    _kernels.grads(
        grad.data_ptr(),
        weight.data_ptr(),
        scores.data_ptr(),
        mask.data_ptr(),
        0 if free is None else free.data_ptr(),
        grad.numel(),
        gw.data_ptr(),
        gs.data_ptr(),
        threads,
    )
    return gw, gs


def static_topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """The same mask as TopKSelector.select, with static shapes and no host synchronisation.

    values: (n,) float32, non-negative and finite. Their bit patterns sort like the values, so a
    radix select on the high then the low 16 bits finds the k-th largest exactly; entries above
    it are kept, and of those equal to it the ones of lowest index, by a cumulative count."""
    n = values.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    bits = values.contiguous().view(torch.int32)  # (n,), order-preserving for values >= 0
    high, low = bits >> 16, bits & 0xFFFF
    ones = torch.ones(n, dtype=torch.int32, device=values.device)
    hist = torch.zeros(1 << 16, dtype=torch.int32, device=values.device).scatter_add_(0, high.long(), ones)
    above = torch.flip(torch.cumsum(torch.flip(hist, (0,)), 0), (0,))  # above[b] = #(high >= b)
    b = ((above >= k).sum() - 1).view(1)  # (1,): the high half of the k-th largest (largest b with >= k at or above)
    # rank of the threshold inside bucket b; gather with a 1-element index (indexing with a 0-d tensor
    # would read it on the host: `.item()`, a synchronisation)
    k2 = k - (above.gather(0, b) - hist.gather(0, b))  # (1,)
    inside = high == b
    hist2 = torch.zeros((1 << 16) + 1, dtype=torch.int32, device=values.device)
    hist2.scatter_add_(0, torch.where(inside, low, 1 << 16).long(), ones)
    above2 = torch.flip(torch.cumsum(torch.flip(hist2[: 1 << 16], (0,)), 0), (0,))
    lo_bits = (above2 >= k2).sum() - 1
    threshold = (b << 16) | lo_bits  # (1,): the k-th largest value's bits
    greater = bits > threshold
    ties = bits == threshold
    missing = k - greater.sum()
    return greater | (ties & (torch.cumsum(ties, 0) <= missing))
