"""Task inference math (engine.nn.superpose) on every architecture, with random masks and per-task
heads of different class counts, BatchNorm statistics and biases."""

from __future__ import annotations

import pytest
import torch

from tests.engine.test_architectures import SMALL
from wsncli.engine.nn.base import set_task_mode
from wsncli.engine.nn.models import ARCHS, ModelConfig, build_model
from wsncli.engine.nn.superpose import SUPERPOSED, Superposed, entropy_scores, normalised_entropy

CLASSES = {1: 2, 2: 3, 3: 5}  # different class counts: the entropy is normalised per head


def _net(arch: str):
    """A network with 3 tasks: random masks, heads, BatchNorm statistics and (mlp) biases."""
    torch.manual_seed(0)
    config = SMALL[arch]
    if arch == "mlp":
        config = ModelConfig("mlp", config.input_shape, config.hidden, bias=True)
    model = build_model(config)
    masks = {}
    gen = torch.Generator().manual_seed(1)
    for task, n in CLASSES.items():
        model.add_task(task, n)
        masks[task] = {
            name: torch.rand(layer.weight.shape, generator=gen) < 0.5 for name, layer in model.subnet_layers().items()
        }
        with torch.no_grad():
            for norm in model.task_norms[str(task)] if str(task) in model.task_norms else []:
                norm.running_mean.normal_(0, 0.3, generator=gen)
                norm.running_var.uniform_(0.5, 2.0, generator=gen)
            for bias in model.task_biases[str(task)] if str(task) in model.task_biases else []:
                bias.normal_(0, 0.1, generator=gen)
    model.eval()
    x = torch.randn(4, *config.input_shape, generator=gen)  # (B, *sample)
    return model, masks, x


def _alpha_gradient(sup: Superposed, x: torch.Tensor) -> torch.Tensor:
    """∂H/∂α for one input (1, *sample) by autograd through an explicit α: the definition."""
    model, k = sup.model, len(sup.candidates)
    alpha = torch.full((k,), 1.0 / k, requires_grad=True)
    sup._install()
    try:
        for name, layer in model.subnet_layers().items():
            stack = torch.stack([sup.masks[t][name].float() for t in sup.candidates])  # (k, *w): test only
            layer._cached_weight = layer.weight.detach() * torch.einsum("k,k...->...", alpha, stack)
        features = model.trunk(x, SUPERPOSED)
        shares = torch.stack([normalised_entropy(model.heads[str(t)](features)) for t in sup.candidates], 1)
        (grad,) = torch.autograd.grad(shares[0].mean(), alpha)  # heads mixed with fixed weights 1/k
    finally:
        sup._remove()
    return grad


@pytest.mark.parametrize("arch", ARCHS)
def test_oneshot_scores_are_the_gradient_of_the_entropy_with_respect_to_alpha(arch):
    model, masks, x = _net(arch)
    candidates = list(CLASSES)
    sup = Superposed(model, candidates, masks)
    scores = sup.scores(x)  # (B, k), the whole batch at once: per sample
    for b in range(len(x)):
        expected = _alpha_gradient(sup, x[b : b + 1])
        torch.testing.assert_close(scores[b], expected, rtol=1e-4, atol=1e-6)
    assert str(SUPERPOSED) not in model.task_norms and str(SUPERPOSED) not in model.task_biases  # removed after


@pytest.mark.parametrize("arch", ARCHS)
def test_a_superposition_of_one_task_is_that_task(arch):
    """α = 1 on one mask: the superposed network's features are the task's own (norms and biases too)."""
    model, masks, x = _net(arch)
    sup = Superposed(model, [2], masks)
    sup._install()
    try:
        with torch.no_grad():
            superposed = model.trunk(x, SUPERPOSED)
    finally:
        sup._remove()
    set_task_mode(model, masks[2])
    with torch.no_grad():
        own = model.trunk(x, 2)
    torch.testing.assert_close(superposed, own, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_entropy_scores_are_each_tasks_own_normalised_entropy(arch):
    model, masks, x = _net(arch)
    candidates = list(CLASSES)
    scores, logits = entropy_scores(model, x, candidates, masks, {t: (lambda v: v) for t in candidates})
    for i, task in enumerate(candidates):
        set_task_mode(model, masks[task])
        with torch.no_grad():
            out = model(x, task)  # (B, n_task)
        assert torch.equal(logits[i], out)
        p = torch.softmax(out, 1)
        expected = -(p * p.log()).sum(1) / torch.log(torch.tensor(float(CLASSES[task])))
        torch.testing.assert_close(scores[:, i], expected)
        assert ((scores[:, i] >= -1e-6) & (scores[:, i] <= 1 + 1e-6)).all()


def test_a_one_class_head_has_the_largest_normalised_entropy():
    assert torch.equal(normalised_entropy(torch.tensor([[5.0], [-3.0]])), torch.ones(2))


@pytest.mark.parametrize("arch", ["mlp", "resnet18"])
def test_the_batch_form_of_the_oneshot_score_is_the_sum_of_the_per_sample_scores(arch):
    model, masks, x = _net(arch)
    sup = Superposed(model, list(CLASSES), masks)
    torch.testing.assert_close(sup.batch_scores(x), sup.scores(x).sum(0), rtol=1e-4, atol=1e-6)
