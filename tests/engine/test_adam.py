"""Adam fused into the step (nn.adam, nn.fused, training.optim): one definition, the C kernel and the
torch reference bit for bit, frozen weights never written, the state resumable bit for bit, and whole
training runs with and without the kernels giving the same bits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import image_task, torch_threads
from wsncli.engine.nn import selection
from wsncli.engine.nn.adam import (
    FLT_MIN,
    AdamSettings,
    LayerAdam,
    adam_constants,
    adam_reference,
    exact_sqrt,
    new_state,
)
from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.nn.selection import TopKSelector
from wsncli.engine.training.loop import TrainSettings, train_task
from wsncli.engine.training.optim import MaskedAdam, make_optimizer

needs_kernels = pytest.mark.skipif(selection._kernels is None, reason="the C kernels are not built here")
CPU = torch.device("cpu")


def _gradient(n: int, g: torch.Generator) -> torch.Tensor:
    """Gradients as training makes them, with exact zeros, tiny values (moments flushed) and large ones."""
    grad = torch.randn(n, generator=g) * 1e-2
    pick = torch.rand(n, generator=g)
    grad[pick < 0.2] = 0.0
    grad[(pick >= 0.2) & (pick < 0.25)] *= 1e-33  # moments of these fall below the smallest normal float
    grad[pick > 0.98] *= 1e3
    return grad


# ---- the definition ------------------------------------------------------------------------------


def test_the_reference_is_the_documented_formula_in_float32_scalars():
    """adam_reference against the module docstring's formula evaluated one float32 at a time (numpy)."""
    hp = AdamSettings(lr=3e-3)
    g = torch.Generator().manual_seed(0)
    n = 64
    param = torch.randn(n, generator=g)
    free = torch.rand(n, generator=g) < 0.7
    state = new_state(param)
    p = param.numpy().copy()
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    f32 = np.float32
    for step in range(1, 13):
        grad = _gradient(n, g)
        adam_reference(param, grad, state, hp, free)
        b1, omb1, b2, omb2, c2, eps, lr_t = (f32(c) for c in adam_constants(float(step), hp))
        for i in range(n):
            if not free[i]:
                continue
            gi = f32(grad[i].item())
            m1 = f32(f32(m[i] * b1) + f32(gi * omb1))
            m1 = f32(0.0) if abs(m1) < FLT_MIN else m1
            v1 = f32(f32(v[i] * b2) + f32(f32(gi * gi) * omb2))
            v1 = f32(0.0) if abs(v1) < FLT_MIN else v1
            p[i] = f32(p[i] - f32(f32(m1 / f32(f32(np.sqrt(v1) * c2) + eps)) * lr_t))
            m[i], v[i] = m1, v1
        assert np.array_equal(param.numpy().view(np.uint32), p.view(np.uint32)), step
        assert np.array_equal(state["exp_avg"].numpy().view(np.uint32), m.view(np.uint32)), step
        assert np.array_equal(state["exp_avg_sq"].numpy().view(np.uint32), v.view(np.uint32)), step
    assert float(state["step"]) == 12
    assert (state["exp_avg"] == 0).any() and not (state["exp_avg"].abs() < FLT_MIN).logical_and(
        state["exp_avg"] != 0
    ).any()


def test_adam_is_adam():
    """The definition is torch's Adam up to rounding (same defaults, bias corrections, no weight decay)."""
    g = torch.Generator().manual_seed(1)
    ours, theirs = torch.randn(500, generator=g), None
    theirs = ours.clone().requires_grad_()
    state, opt = new_state(ours), torch.optim.Adam([theirs], lr=1e-2)
    for _ in range(50):
        grad = torch.randn(500, generator=g)
        adam_reference(ours, grad, state, AdamSettings(1e-2))
        theirs.grad = grad.clone()
        opt.step()
    assert torch.allclose(ours, theirs.detach(), rtol=0, atol=1e-5)


def test_exact_sqrt_is_the_correctly_rounded_square_root():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 0x7F800000, 2_000_000, dtype=np.int64).astype(np.uint32)
    special = np.array([0.0, 1e-45, 1.1754942e-38, 1.0, 2.0, 4.0, 3.4028235e38, np.inf], np.float32)
    v = np.concatenate([bits.view(np.float32), special])
    assert np.array_equal(exact_sqrt(torch.from_numpy(v)).numpy().view(np.uint32), np.sqrt(v).view(np.uint32))


# ---- the C kernel against the reference ---------------------------------------------------------


def _run_kernel_and_reference(n, frozen_share, threads, from_grads, steps, seed=0):
    """`steps` updates of one layer by the kernel and by the reference, compared bit for bit after each."""
    g = torch.Generator().manual_seed(seed)
    hp = AdamSettings(lr=1e-2)
    w0, s0 = torch.randn(n, generator=g), torch.randn(n, generator=g) * 0.05
    free = (torch.rand(n, generator=g) >= frozen_share) if frozen_share else None
    k = max(1, int(0.3 * n))
    ref = (w0.clone(), s0.clone(), new_state(w0), new_state(s0))
    ker = (w0.clone(), s0.clone(), new_state(w0), new_state(s0))
    adam = LayerAdam(ker[2], ker[3], hp)
    work, positions = torch.empty(n), torch.empty(n, dtype=torch.int32)
    w_eff, mask_buffer = torch.empty(n), torch.empty(n, dtype=torch.bool)
    for step in range(steps):
        mask = TopKSelector().select(ref[1].abs(), k)  # this step's mask
        grad = _gradient(n, g)
        gw = grad * (mask if free is None else mask & free).float()
        gs = (grad * ref[0]) * ref[1].sign()
        if from_grads and free is not None and step == steps // 2:
            gw = gw.masked_fill(~free, float("nan"))  # frozen weights never see even a NaN gradient
        adam_reference(ref[0], gw, ref[2], hp, free)
        adam_reference(ref[1], gs, ref[3], hp)
        if from_grads:
            assert adam.fused_update(ker[0], ker[1], free, threads, grad_weight=gw, grad_scores=gs) is None
        else:
            mask_buffer.copy_(mask)
            lo, hi = 0.01, 0.02
            scan = adam.fused_update(
                ker[0], ker[1], free, threads, grad=grad, mask=mask_buffer, next_step=(w_eff, lo, hi, work, positions)
            )
            _check_next_step(ker, mask_buffer, w_eff, work, positions, *scan, lo, hi)
        for a, b in zip(ker, ref):
            if isinstance(a, dict):
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(a[key].view(torch.int32), b[key].view(torch.int32)), (step, key)
            else:
                assert torch.equal(a.view(torch.int32), b.view(torch.int32)), step
    return w0, ker, free


def _check_next_step(ker, mask, w_eff, work, positions, band, above, nonfinite, lo, hi):
    """The pass's outputs for the next selection: mask = |s| > hi, w_eff = w * mask, the band (lo, hi]."""
    a = ker[1].abs()
    assert torch.equal(mask, a > hi) and torch.equal(w_eff, ker[0] * mask.float())
    in_band = (a > lo) & (a <= hi)
    assert (band, above, nonfinite) == (int(in_band.sum()), int((a > hi).sum()), 0)
    assert torch.equal(positions[:band].long(), in_band.nonzero().view(-1))
    assert torch.equal(work[:band], a[in_band])


@needs_kernels
@pytest.mark.parametrize("n", [1, 7, 63, 64, 65, 1000])
@pytest.mark.parametrize("frozen_share", [0.0, 0.4])
@pytest.mark.parametrize("from_grads", [False, True])
def test_the_kernel_gives_the_references_bits(n, frozen_share, from_grads):
    w0, ker, free = _run_kernel_and_reference(n, frozen_share, 1, from_grads, steps=25)
    if free is not None:
        assert torch.equal(ker[0][~free].view(torch.int32), w0[~free].view(torch.int32))  # frozen: untouched
        assert not ker[2]["exp_avg"][~free].any() and not ker[2]["exp_avg_sq"][~free].any()


@needs_kernels
@pytest.mark.parametrize("from_grads", [False, True])
def test_the_kernel_split_over_threads_gives_the_same_bits(from_grads):
    """A layer of >= 2^18 weights runs in parts on several threads (odd size: parts of unequal length)."""
    _run_kernel_and_reference((1 << 18) + 77, 0.3, 3, from_grads, steps=3)


@needs_kernels
def test_the_kernel_refuses_a_call_without_its_outputs():
    n = 8
    adam = LayerAdam(new_state(torch.zeros(n)), new_state(torch.zeros(n)), AdamSettings(1e-3))
    with pytest.raises(ValueError, match="either grad"):
        adam.fused_update(torch.zeros(n), torch.zeros(n), None, 1, grad=torch.zeros(n), mask=torch.zeros(n, dtype=bool))


@needs_kernels
def test_the_selection_after_the_adam_pass_is_exact_with_ties_and_drift():
    """mode 2 of the select kernel (the band scanned by the Adam pass, only the band set) against the
    definition, over drifting scores with exact ties injected, as test_selection does for mode 1."""
    from tests.engine.test_selection import reference_mask

    g = torch.Generator().manual_seed(4)
    n, k = 3000, 900
    scores, weight = torch.randn(n, generator=g) * 0.05, torch.randn(n, generator=g)
    hp = AdamSettings(lr=0.0)  # lr 0: the pass leaves weight and scores as they are, and scans them
    adam = LayerAdam(new_state(weight), new_state(scores), hp)
    selector, work, positions = TopKSelector(), torch.empty(n), torch.empty(n, dtype=torch.int32)
    mask, w_eff = torch.empty(n, dtype=torch.bool), torch.empty(n)
    selector.fused_select(scores, weight, k, work, mask, w_eff)
    for step in range(120):
        scores += torch.randn(n, generator=g) * (1e-3 if step % 40 else 2e-2)
        if step % 30 == 7:
            scores[:200] = scores[200:400]  # exact ties anywhere
        if step % 30 == 20:
            scores.copy_(torch.round(scores * 400) / 400)  # dozens of ties at every value, the threshold's too
        prescan = adam.fused_update(
            weight,
            scores,
            None,
            1,
            grad=torch.zeros(n),
            mask=mask,
            next_step=(w_eff, selector.lo, selector.hi, work, positions),
        )
        selector.fused_select(scores, weight, k, work, mask, w_eff, 1, prescan, positions)
        expected = reference_mask(scores.abs(), k)
        assert torch.equal(mask, expected), step
        assert torch.equal(w_eff, weight * expected.float()), step
    assert selector.full_selections < 15


# ---- whole steps: with and without the kernels, resumed, data-parallel form ---------------------------


def _net(arch: str):
    """A small network of odd layer sizes, two tasks, 40% of every layer frozen; and its data."""
    config = ModelConfig("resnet18", (2, 9, 9), width=4) if arch == "resnet18" else ModelConfig("mlp", (23,), (17, 11))
    shape = config.input_shape
    torch.manual_seed(5)
    model = build_model(config)
    model.add_task(1, 3)
    model.add_task(2, 3)
    g = torch.Generator().manual_seed(6)
    frozen = {n: torch.rand(l.weight.shape, generator=g) < 0.4 for n, l in model.subnet_layers().items()}
    model.train_subnet(0.3, frozen)
    params = [p for l in model.subnet_layers().values() for p in (l.weight, l.scores)]
    params += list(model.heads["2"].parameters())
    x, y = torch.randn(40, *shape, generator=g), torch.randint(0, 3, (40,), generator=g)
    return model, params, frozen, x, y


def _steps(model, opt, x, y, first, last):
    model.train()
    for i in range(first, last):
        j = (i % 4) * 10
        loss = F.cross_entropy(model(x[j : j + 10], 2), y[j : j + 10])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _bits(model, opt) -> list[torch.Tensor]:
    out = [t.detach().clone() for t in model.state_dict().values()]
    for entry in opt.state_dict()["state"].values():
        out += [entry[k].clone() for k in ("step", "exp_avg", "exp_avg_sq")]
    return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(
            s.view(torch.int32) if s.dtype == torch.float32 else s,
            t.view(torch.int32) if t.dtype == torch.float32 else t,
        )
        for s, t in zip(a, b)
    )


@pytest.mark.parametrize("arch", ["mlp", "resnet18"])
def test_steps_with_and_without_the_kernels_and_data_parallel_give_the_same_bits(monkeypatch, arch):
    """40 steps of a frozen-in-part network: the C path (Adam in the step's pass), the data-parallel
    form (gradients on weight and scores, then the kernel) and torch operations only: the same bits."""
    runs = {}
    for name, env, fuse in (("fused", "", True), ("data-parallel", "", False), ("torch", "torch", True)):
        if selection._kernels is None and env == "":
            continue
        monkeypatch.setenv("WSN_KERNELS", env)
        with torch_threads(1):
            model, params, frozen, x, y = _net(arch)
            before = {n: l.weight.detach().clone() for n, l in model.subnet_layers().items()}
            opt = make_optimizer(model, params, "wsn", 1e-2, CPU, False, data_parallel=not fuse)
            assert isinstance(opt, MaskedAdam) and opt.fuse is (fuse and env == "")
            _steps(model, opt, x, y, 0, 40)
            if opt.fuse:
                assert all(p.grad is None for l in model.subnet_layers().values() for p in (l.weight, l.scores))
            for n, l in model.subnet_layers().items():
                assert torch.equal(l.weight.detach()[frozen[n]], before[n][frozen[n]])
            runs[name] = _bits(model, opt)
    assert len(runs) >= 1
    for name, bits in runs.items():
        assert _same(bits, next(iter(runs.values()))), name


@pytest.mark.parametrize("env", ["", "torch"])
def test_an_optimizer_restored_mid_run_continues_bit_for_bit(monkeypatch, env):
    """state_dict after 15 steps, a new network and optimizer loaded from it, 15 more: the bits of 30."""
    monkeypatch.setenv("WSN_KERNELS", env)
    with torch_threads(1):
        model, params, _, x, y = _net("mlp")
        opt = make_optimizer(model, params, "wsn", 1e-2, CPU, False, False)
        _steps(model, opt, x, y, 0, 30)
        whole = _bits(model, opt)

        model, params, frozen, x, y = _net("mlp")
        opt = make_optimizer(model, params, "wsn", 1e-2, CPU, False, False)
        _steps(model, opt, x, y, 0, 15)
        weights, saved = {k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict()
        del model, opt
        model, params, _, x, y = _net("mlp")
        model.load_state_dict(weights)
        opt = make_optimizer(model, params, "wsn", 1e-2, CPU, False, False)
        fresh = opt.state_dict()
        fresh["state"] = saved["state"]
        opt.load_state_dict(fresh)
        _steps(model, opt, x, y, 15, 30)
        assert _same(_bits(model, opt), whole)


def test_heads_get_torch_fused_adams_bits():
    """Parameters other than the masked layers' (heads, per-task biases) step exactly as torch.optim.Adam."""
    with torch_threads(1):
        model, params, _, x, y = _net("mlp")
        head = model.heads["2"]
        twin = torch.nn.Linear(head.in_features, head.out_features)
        twin.load_state_dict(head.state_dict())
        opt = make_optimizer(model, params, "wsn", 1e-2, CPU, False, False)
        theirs = torch.optim.Adam(twin.parameters(), lr=1e-2, fused=True)
        g = torch.Generator().manual_seed(2)
        for _ in range(10):
            grads = [torch.randn(p.shape, generator=g) for p in head.parameters()]
            opt.zero_grad()
            for p, q, grad in zip(head.parameters(), twin.parameters(), grads):
                p.grad, q.grad = grad.clone(), grad.clone()
            opt.step()
            theirs.step()
        for p, q in zip(head.parameters(), twin.parameters()):
            assert torch.equal(p.detach(), q.detach())


def test_train_task_gives_the_same_bits_with_and_without_the_kernels(monkeypatch):
    """A task trained by train_task twice, the second time with $WSN_KERNELS=torch: weights, scores,
    heads and masks identical (the guarantee of a release: runs reproduce on machines without a C compiler)."""
    results = []
    for env in ("", "torch"):
        monkeypatch.setenv("WSN_KERNELS", env)
        with torch_threads(1):
            torch.manual_seed(0)
            model = build_model(ModelConfig("mlp", (400,), (30, 20)))
            model.add_task(1, 2)
            data = image_task(1, n_train=64, shape=(1, 20, 20))
            result = train_task(model, data, TrainSettings(1, 0.3, 2, 8, 1e-2, 0), None, CPU)
            results.append(({k: v.clone() for k, v in model.state_dict().items()}, result.masks))
    (a, ma), (b, mb) = results
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)


def test_constants_use_the_bias_corrections_of_the_step():
    b1, omb1, b2, omb2, c2, eps, lr_t = adam_constants(3.0, AdamSettings(1e-3))
    assert lr_t == pytest.approx(1e-3 / (1 - 0.9**3), rel=1e-7)
    assert c2 == pytest.approx(1 / math.sqrt(1 - 0.999**3), rel=1e-7)
    assert (b1, b2) == (np.float32(0.9), np.float32(0.999)) and omb1 == np.float32(1 - 0.9)


@needs_kernels
def test_weights_or_scores_changed_in_place_between_steps_are_seen_by_the_next_forward():
    """The Adam pass prepares the next selection; an in-place change after it (a restored epoch, a loaded
    state) must make the next forward select from scratch (version counters), not use what was prepared."""
    from tests.engine.test_selection import reference_mask

    with torch_threads(1):
        model, params, _, x, y = _net("mlp")
        opt = make_optimizer(model, params, "wsn", 1e-2, CPU, False, False)
        _steps(model, opt, x, y, 0, 5)
        g = torch.Generator().manual_seed(9)
        for what in ("scores", "weight"):
            layer = model.subnet_layers()["layers.0"]
            with torch.no_grad():
                getattr(layer, what).copy_(torch.randn(layer.weight.shape, generator=g))
            out = layer(x[:4])
            expected = reference_mask(layer.scores.detach().abs().reshape(-1), layer.k).view(layer.weight.shape)
            assert torch.equal(layer._last_mask, expected), what
            assert torch.equal(out, F.linear(x[:4], layer.weight.detach() * expected.float())), what
            _steps(model, opt, x, y, 0, 2)


def test_the_device_path_runs_on_the_cpu_when_asked():
    """set_static_selection: the static selection and torch's fused Adam on the CPU, as CUDA runs them."""
    from tests.engine.test_selection import reference_mask
    from wsncli.engine.nn.subnet import set_static_selection

    with torch_threads(1):
        torch.manual_seed(5)
        model = build_model(ModelConfig("mlp", (23,), (17, 11)))
        model.add_task(1, 3)
        set_static_selection(model)
        model.train_subnet(0.3, None)
        params = [p for l in model.subnet_layers().values() for p in (l.weight, l.scores)]
        opt = make_optimizer(model, params + list(model.heads["1"].parameters()), "wsn", 1e-2, CPU, False, False)
        assert type(opt) is torch.optim.Adam and all(not l._fused() for l in model.subnet_layers().values())
        x, y = torch.randn(10, 23), torch.randint(0, 3, (10,))
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x, 1), y).backward()
            opt.step()
        for layer in model.subnet_layers().values():
            expected = reference_mask(layer.scores.detach().abs().reshape(-1), layer.k).view(layer.weight.shape)
            assert torch.equal(layer.current_mask(), expected)


@needs_kernels
def test_a_layer_outside_the_kernels_steps_beside_fused_ones():
    """A layer whose mask keeps all its weights (k = n: the torch path) in a network whose other layers
    run the fused step: each is updated by its own form, the bits of the reference."""
    with torch_threads(1):
        model, params, frozen, x, y = _net("mlp")
        last = model.subnet_layers()["layers.1"]
        last.train_subnet(last.weight.numel(), frozen["layers.1"])
        opt = make_optimizer(model, params, "wsn", 1e-2, CPU, False, False)
        assert model.subnet_layers()["layers.0"].fused.adam is not None and last.fused is None
        before = last.weight.detach().clone()
        _steps(model, opt, x, y, 0, 5)
        assert not torch.equal(last.weight.detach(), before)
        assert torch.equal(last.weight.detach()[frozen["layers.1"]], before[frozen["layers.1"]])
        assert (
            float(opt.state[last.weight]["step"])
            == float(opt.state[model.subnet_layers()["layers.0"].weight]["step"])
            == 5
        )
