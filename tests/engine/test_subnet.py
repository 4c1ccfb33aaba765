"""Subnet layers: exact per-layer top-c masks, the incremental selector, straight-through gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsncli.engine.nn.subnet import SubnetConv2d, SubnetLinear, TopKSelector, exact_top_k, k_for_capacity

PROPERTY = settings(max_examples=150, deadline=None)


def reference_top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """The spec, written independently: the k largest values, ties broken by lowest flat index."""
    v = values.numpy()
    order = np.lexsort((np.arange(v.size), -v))  # by value descending, then index ascending
    mask = np.zeros(v.size, dtype=bool)
    mask[order[:k]] = True
    return torch.from_numpy(mask)


def assert_is_top_k(mask: torch.Tensor, values: torch.Tensor, k: int) -> None:
    assert mask.dtype == torch.bool and mask.shape == values.shape
    assert int(mask.sum()) == k
    if 0 < k < values.numel():
        assert float(values[mask].min()) >= float(values[~mask].max())
    assert torch.equal(mask, reference_top_k(values, k))


# values with many ties: a few repeated levels mixed with arbitrary non-negative floats
tie_values = st.lists(
    st.one_of(st.sampled_from([0.0, 0.25, 1.0, 3.0]), st.floats(0, 100, width=32, allow_subnormal=False)),
    min_size=1,
    max_size=300,
)


# ---- k = round(c·n) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [
        (6400, 0.123, 787),
        (10000, 0.123, 1230),
        (10, 0.5, 5),
        (10, 0.3, 3),
        (7, 0.5, 4),
        (5, 0.5, 2),
        (100, 1.0, 100),
        (3, 0.01, 0),
    ],
)
def test_k_for_capacity_table(n, c, k):
    assert k_for_capacity(n, c) == k


# ---- exact_top_k and TopKSelector.select --------------------------------------------------------


def test_ties_at_the_threshold_are_broken_by_lowest_index():
    values = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5, 1.0])
    mask = exact_top_k(values, 3, torch.tensor(1.0))
    assert mask.tolist() == [True, True, True, False, False, False]
    assert TopKSelector().select(values, 3).tolist() == [True, True, True, False, False, False]


def test_select_all_none_and_all_equal():
    values = torch.full((9,), 0.7)
    sel = TopKSelector()
    assert sel.select(values, 9).all()
    assert not sel.select(values, 0).any()
    assert sel.select(values, 4).tolist() == [True] * 4 + [False] * 5
    assert sel.select(torch.zeros(5), 2).tolist() == [True, True, False, False, False]


@PROPERTY
@given(values=tie_values, data=st.data())
def test_exact_top_k_property(values, data):
    v = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(1, v.numel()))
    threshold = torch.kthvalue(v, v.numel() - k + 1).values
    assert_is_top_k(exact_top_k(v, k, threshold), v, k)


@PROPERTY
@given(values=tie_values, data=st.data())
def test_selector_select_property(values, data):
    v = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(0, v.numel()))
    assert_is_top_k(TopKSelector().select(v, k), v, k)


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 2000),
    capacity=st.floats(0.01, 1.0),
    steps=st.lists(
        st.sampled_from(["drift", "drift", "drift", "jump", "scale", "quantise", "same"]), min_size=2, max_size=12
    ),
)
def test_incremental_selector_equals_from_scratch_over_drifting_vectors(seed, n, capacity, steps):
    """One selector reused across steps (as in training) must always equal a fresh exact selection."""
    rng = np.random.default_rng(seed)
    k = k_for_capacity(n, capacity)
    v = np.abs(rng.normal(size=n)).astype(np.float32)
    selector = TopKSelector()
    for step in steps:
        if step == "drift":  # a training step: small moves
            v = np.abs(v + rng.normal(scale=1e-3, size=n)).astype(np.float32)
        elif step == "jump":  # scores far from the band: forces the fallback
            v = np.abs(rng.normal(scale=50.0, size=n)).astype(np.float32)
        elif step == "scale":
            v = (v * 0.01).astype(np.float32)
        elif step == "quantise":  # many ties around the threshold
            v = (np.round(v * 4) / 4).astype(np.float32)
        values = torch.from_numpy(v.copy())
        assert_is_top_k(selector.select(values, k), values, k)


def test_small_drift_uses_the_band_and_a_jump_uses_the_fallback():
    rng = np.random.default_rng(0)
    v = np.abs(rng.normal(size=10_000)).astype(np.float32)
    selector = TopKSelector()
    k = 3000
    for _ in range(50):
        v = np.abs(v + rng.normal(scale=1e-4, size=v.size)).astype(np.float32)
        values = torch.from_numpy(v.copy())
        assert_is_top_k(selector.select(values, k), values, k)
    assert selector.full_selections <= 3  # the band found the threshold almost every time
    before = selector.full_selections
    values = torch.from_numpy(v * 1000)
    assert_is_top_k(selector.select(values, k), values, k)
    assert selector.full_selections == before + 1


# ---- layer masks: exactly round(c·n) per layer -------------------------------------------------


@PROPERTY
@given(
    out_f=st.integers(1, 40),
    in_f=st.integers(1, 40),
    capacity=st.floats(0.001, 1.0),
    levels=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_linear_mask_keeps_exactly_round_c_n(out_f, in_f, capacity, levels, seed):
    torch.manual_seed(seed)
    layer = SubnetLinear(in_f, out_f)
    with torch.no_grad():  # few distinct |score| levels: ties everywhere
        layer.scores.copy_(torch.randint(-levels, levels + 1, layer.scores.shape).float())
    n = out_f * in_f
    layer.train_subnet(k_for_capacity(n, capacity), None)
    layer(torch.randn(3, in_f))
    assert int(layer._last_mask.sum()) == round(capacity * n)
    assert torch.equal(
        layer.current_mask().reshape(-1), reference_top_k(layer.scores.detach().abs().reshape(-1), round(capacity * n))
    )


@pytest.mark.parametrize("capacity", [0.03, 0.05, 0.1, 0.3, 0.5, 1.0])
def test_conv_mask_keeps_exactly_round_c_n(capacity):
    torch.manual_seed(1)
    layer = SubnetConv2d(3, 8, 3)
    n = layer.weight.numel()
    layer.train_subnet(k_for_capacity(n, capacity), None)
    out = layer(torch.randn(2, 3, 6, 6))
    assert out.shape == (2, 8, 4, 4)
    assert int(layer._last_mask.sum()) == round(capacity * n)
    assert layer._last_mask.shape == layer.weight.shape


# ---- straight-through estimator ----------------------------------------------------------------


def _reference_grad(apply, x, weight, mask, r):
    """d(loss)/d(w_eff) for w_eff = weight ⊙ mask, computed with plain autograd."""
    w_eff = (weight.detach() * mask).requires_grad_()
    (apply(x, w_eff) * r).sum().backward()
    return w_eff.grad


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_straight_through_gradients(kind):
    torch.manual_seed(0)
    if kind == "linear":
        layer, x, apply = SubnetLinear(7, 5), torch.randn(4, 7), F.linear
    else:
        layer, x, apply = SubnetConv2d(2, 3, 3), torch.randn(2, 2, 5, 5), F.conv2d
    frozen = torch.rand(layer.weight.shape) < 0.3
    layer.train_subnet(k_for_capacity(layer.weight.numel(), 0.5), frozen)
    out = layer(x)
    r = torch.randn(out.shape)
    (out * r).sum().backward()
    mask = layer._last_mask
    grad_w_eff = _reference_grad(apply, x, layer.weight, mask, r)
    # scores: the mask is a function of |score|; its gradient grad_w_eff ⊙ weight passes straight
    # through to |score|, hence ⊙ sign(score) for the score itself, for every weight
    sign = layer.scores.detach().sign()
    assert torch.equal(layer.scores.grad, grad_w_eff * layer.weight.detach() * sign)
    # weights: only those in the mask and not frozen train
    assert torch.equal(layer.weight.grad, grad_w_eff * (mask & ~frozen).float())
    assert (layer.weight.grad[frozen] == 0).all()
    assert (layer.weight.grad[~mask] == 0).all()
    assert layer.scores.grad[~mask].abs().sum() > 0  # unselected weights can still win their way in


def test_a_score_step_raises_the_rank_of_a_helpful_weight_whatever_the_scores_sign():
    """Gradient descent on the scores must raise |score| where keeping the weight lowers the loss.

    Here the loss is -sum(w_eff), so every weight with w > 0 helps; both a positive and a negative
    score of such a weight must move away from zero (a gradient without sign(score) pushes the
    negative one towards zero, out of the mask).
    """
    layer = SubnetLinear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0]]))
        layer.scores.copy_(torch.tensor([[0.5, -0.5]]))
    layer.train_subnet(2, None)
    (-layer(torch.ones(1, 2))).sum().backward()
    with torch.no_grad():
        stepped = layer.scores - 0.1 * layer.scores.grad
    assert torch.all(stepped.abs() > 0.5), stepped


def test_frozen_weights_do_not_move_under_adam():
    torch.manual_seed(0)
    layer = SubnetLinear(20, 10)
    frozen = torch.rand(10, 20) < 0.5
    layer.train_subnet(100, frozen)
    before = layer.weight.detach().clone()
    opt = torch.optim.Adam([layer.weight, layer.scores], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        layer(torch.randn(8, 20)).pow(2).sum().backward()
        opt.step()
    assert torch.equal(layer.weight.detach()[frozen], before[frozen])
    assert not torch.equal(layer.weight.detach()[~frozen], before[~frozen])


def test_fixed_mask_mode_caches_the_masked_weight_once():
    torch.manual_seed(0)
    layer = SubnetLinear(6, 4)
    mask = torch.rand(4, 6) < 0.5
    layer.use_mask(mask)
    x = torch.randn(3, 6)
    out = layer(x)
    cached = layer._cached_weight
    assert torch.equal(out, F.linear(x, torch.where(mask, layer.weight.detach(), torch.zeros(()))))
    layer(x)
    assert layer._cached_weight is cached  # not recomputed per forward
    layer.use_mask(~mask)
    assert layer._cached_weight is None  # a new mask drops the cache


def test_layers_have_no_bias_and_a_score_per_weight():
    for layer in (SubnetLinear(5, 3), SubnetConv2d(2, 4, 3)):
        names = {n for n, _ in layer.named_parameters()}
        assert names == {"weight", "scores"}
        assert layer.scores.shape == layer.weight.shape
