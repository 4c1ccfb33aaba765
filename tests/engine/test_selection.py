"""One selection, three implementations: the torch band selector, the fused C kernel and the static
(sync-free) radix select give bit-identical masks, and the fused step the same bits as torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsncli.engine.nn import selection
from wsncli.engine.nn.selection import TopKSelector, static_topk_mask
from wsncli.engine.nn.subnet import SubnetConv2d, SubnetLinear

needs_kernels = pytest.mark.skipif(selection._kernels is None, reason="the C kernels are not built here")


def reference_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """The definition, written plainly: sort by (value descending, index ascending), keep the first k."""
    order = sorted(range(values.numel()), key=lambda i: (-float(values[i]), i))
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def _values(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(n, generator=g).abs()
    if kind == "heavy-ties":
        return torch.randint(0, 4, (n,), generator=g).float() / 4
    if kind == "all-equal":
        return torch.full((n,), 0.5)
    if kind == "with-zeros":
        v = torch.randn(n, generator=g).abs()
        v[torch.rand(n, generator=g) < 0.5] = 0.0
        return v
    raise ValueError(kind)


def _fused(values: torch.Tensor, k: int, selector: TopKSelector | None = None) -> torch.Tensor:
    selector = selector or TopKSelector()
    n = values.numel()
    scores = values * torch.where(torch.arange(n) % 3 == 0, -1.0, 1.0)  # |scores| == values, signs mixed
    weight = torch.arange(n, dtype=torch.float32) - n / 2  # w_eff must be weight where kept, 0 elsewhere
    mask, w_eff = _fused_select(selector, scores, weight, k)
    assert torch.equal(w_eff, weight * mask.float())
    return mask


def _fused_select(selector, scores, weight, k, threads=1):
    n = scores.numel()
    buffers = (torch.empty(n, dtype=torch.bool), torch.empty(n), torch.empty(n))
    return selector.fused_select(scores, weight, k, buffers[2], buffers[0], buffers[1], threads)


KINDS = ["random", "heavy-ties", "all-equal", "with-zeros"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_every_implementation_gives_the_definition(kind, n):
    values = _values(kind, n, seed=n)
    for k in sorted({1, max(1, n // 3), n // 2, n - 1} - {0}) if n > 1 else [1]:
        expected = reference_mask(values, k)
        assert torch.equal(TopKSelector().select(values, k), expected), (kind, n, k, "band")
        assert torch.equal(static_topk_mask(values, k), expected), (kind, n, k, "static")
        if selection._kernels is not None and 0 < k < n:
            assert torch.equal(_fused(values, k), expected), (kind, n, k, "fused")


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(0, 100, width=32), min_size=2, max_size=300), data=st.data())
def test_static_select_property(values, data):
    v = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(0, len(values)))
    mask = static_topk_mask(v, k)
    assert int(mask.sum()) == k
    assert torch.equal(mask, reference_mask(v, k))


@needs_kernels
@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(0, 10, width=32), min_size=2, max_size=300), data=st.data())
def test_fused_select_property(values, data):
    v = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(1, len(values) - 1))
    assert torch.equal(_fused(v, k), reference_mask(v, k))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_implementations_agree_over_many_drifting_steps(seed):
    """Scores drift as under training; the incremental selectors must stay exact at every step."""
    g = torch.Generator().manual_seed(seed)
    n, k = 5000, 1500
    scores = torch.randn(n, generator=g) * 0.05
    band, fused = TopKSelector(), TopKSelector()
    for step in range(150):
        scores += torch.randn(n, generator=g) * (1e-3 if step % 50 else 2e-2)  # drift, and now and then a jump
        if step % 40 == 7:
            scores[:300] = scores[300:600]  # exact ties at arbitrary places
        values = scores.abs()
        expected = static_topk_mask(values, k)
        assert torch.equal(band.select(values, k), expected), step
        if selection._kernels is not None:
            mask, _ = _fused_select(fused, scores, torch.ones(n), k)
            assert torch.equal(mask, expected), step
        if step % 25 == 0:
            assert torch.equal(expected, reference_mask(values, k)), step
    assert band.full_selections < 40 and (selection._kernels is None or fused.full_selections < 40)


@needs_kernels
@pytest.mark.parametrize("frozen_share", [0.0, 0.4])
def test_the_fused_step_gives_torchs_bits(monkeypatch, frozen_share):
    """Masked weight, mask, and both gradients are bit-identical with and without the kernels."""
    torch.manual_seed(0)
    results = {}
    for backend in ("fused", "torch"):
        monkeypatch.setenv("WSN_KERNELS", "" if backend == "fused" else "torch")
        torch.manual_seed(3)
        layers = [SubnetLinear(30, 20), SubnetConv2d(3, 4, 3)]
        out = []
        for layer in layers:
            frozen = torch.rand(layer.weight.shape) < frozen_share if frozen_share else None
            layer.train_subnet(int(0.3 * layer.weight.numel()), frozen)
            x = torch.randn(5, 30) if isinstance(layer, SubnetLinear) else torch.randn(2, 3, 6, 6)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert layer._fused() is (backend == "fused")
                for _ in range(3):  # several steps: the band is used after the first
                    y = layer(x)
                    y.square().sum().backward()
                    with torch.no_grad():
                        layer.weight -= 0.01 * layer.weight.grad
                        layer.scores -= 0.01 * layer.scores.grad
                    out.append(
                        (
                            y.detach().clone(),
                            layer.weight.grad.clone(),
                            layer.scores.grad.clone(),
                            layer._last_mask.clone(),
                        )
                    )
                    layer.weight.grad = layer.scores.grad = None
            finally:
                torch.set_num_threads(threads)
        results[backend] = out
    for a, b in zip(results["fused"], results["torch"]):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


@needs_kernels
def test_non_finite_scores_are_refused_by_the_kernel():
    scores = torch.randn(100)
    scores[7] = float("nan")
    with pytest.raises(selection.NonFiniteScores, match="1 scores are NaN or infinite"):
        _fused_select(TopKSelector(), scores, torch.ones(100), 30)


@pytest.mark.cuda
def test_static_select_needs_no_host_synchronisation_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (the GPU check script runs this)")
    v = torch.rand(10000, device="cuda")
    static_topk_mask(v, 3000)  # warm up
    torch.cuda.set_sync_debug_mode("error")
    try:
        mask = static_topk_mask(v, 3000)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(mask.sum()) == 3000 and torch.equal(mask.cpu(), reference_mask(v.cpu(), 3000))


def test_reference_is_what_the_docstring_says():
    v = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9])
    assert reference_mask(v, 3).tolist() == [True, True, False, False, True]  # 0.9, 0.9, then the first 0.5
    assert np.array_equal(static_topk_mask(v, 3).numpy(), reference_mask(v, 3).numpy())
