"""CUDA: the sync-free step, graph capture, and a checkpoint trained on CUDA proven on the CPU.

Marked `cuda` and skipped without a GPU (CI has none); benchmarks/gpu_check.sh runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.training.graphed import GraphedStep

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]
CUDA = torch.device("cuda")


def _model(arch: str = "mlp"):
    torch.manual_seed(0)
    shape = (1, 20, 20) if arch != "mlp" else (784,)
    model = build_model(ModelConfig(arch, shape, (100, 100))).to(CUDA)
    model.add_task(1, 10)
    model.to(CUDA)
    frozen = {n: torch.rand(l.weight.shape, device=CUDA) < 0.3 for n, l in model.subnet_layers().items()}
    model.train_subnet(0.3, frozen)
    params = [p for l in model.subnet_layers().values() for p in (l.weight, l.scores)] + list(
        model.heads["1"].parameters()
    )
    return model, params, shape


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_a_training_step_never_synchronises_with_the_host(arch):
    model, params, shape = _model(arch)
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    x, y = torch.randn(16, *shape, device=CUDA), torch.randint(0, 10, (16,), device=CUDA)
    model.train()
    for _ in range(2):  # warm-up outside the check (first-use allocations may synchronise)
        F.cross_entropy(model(x, 1), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss = F.cross_entropy(model(x, 1), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for layer in model.subnet_layers().values():
        assert int(layer.current_mask().sum()) == layer.k


def test_graphed_steps_give_the_eager_steps_bits():
    results = []
    for graphed in (False, True):
        model, params, shape = _model()
        opt = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=graphed)
        g = torch.Generator(device="cpu").manual_seed(1)
        batches = [
            (torch.randn(10, *shape, generator=g).to(CUDA), torch.randint(0, 10, (10,), generator=g).to(CUDA))
            for _ in range(12)
        ]

        def eager(x, y, model=model, opt=opt):
            logits = model(x, 1)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach() * x.shape[0], (logits.detach().argmax(1) == y).sum()

        step = GraphedStep(model, 1, opt, eager, 10) if graphed else eager
        model.train()
        losses = [step(x, y)[0].item() for x, y in batches]
        if graphed:
            assert step.failed is None and step.graph is not None
        results.append((losses, [p.detach().cpu().clone() for p in params]))
    (la, pa), (lb, pb) = results
    assert np.allclose(la, lb, rtol=0, atol=0) or np.allclose(la, lb, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(pa, pb))


def test_a_task_trained_on_cuda_keeps_its_frozen_weights_and_proves_forget_free_on_the_cpu(tmp_path):
    from wsncli.engine.store.checkpoint import load_checkpoint
    from wsncli.engine.usecases.evaluate import evaluate_checkpoint
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    path = tmp_path / "cuda.pt"
    for task in (1, 2, 3):
        learn_task(TaskRequest(ckpt=path, task=task, epochs=2, device="cuda"))
    ckpt = load_checkpoint(path)
    assert all(r.device.startswith("cuda") for r in ckpt.tasks)
    report = evaluate_checkpoint(ckpt, None, None, torch.device("cpu"))
    assert report.forget_free and all(t.subnet_match for t in report.tasks)  # outputs may differ only in near-ties


@pytest.mark.parametrize("arch", ["mlp", "conv", "resnet18", "lenet", "conv4"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphed"])
def test_train_task_steps_never_synchronise_on_cuda(arch, graphs, monkeypatch):
    """The CUDA twin of tests/engine/test_sync_free.py: `train_task` itself, every architecture, eager
    and graphed, under set_sync_debug_mode("error") except in the loop's deliberate reads."""
    from tests.conftest import image_task
    from wsncli.engine.training import loop

    shapes = {"mlp": (1, 8, 8), "conv": (1, 20, 20), "resnet18": (1, 9, 9), "lenet": (1, 16, 16), "conv4": (1, 8, 8)}
    torch.manual_seed(0)
    config = ModelConfig(arch, shapes[arch], (32, 32), width=4 if arch == "resnet18" else None)
    model = build_model(config)
    model.add_task(1, 2)
    model.to(CUDA)
    data = image_task(1, n_train=70, shape=shapes[arch])  # 7 full batches of 10: warm-up, capture, replays

    def host_read(fn):  # nested reads (_check_loss inside _end_epoch) restore the mode they found
        def wrapped(*args, **kwargs):
            before = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("default")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(before)

        return wrapped

    monkeypatch.setattr(loop._Run, "_end_epoch", host_read(loop._Run._end_epoch))
    monkeypatch.setattr(loop._Run, "_shuffled", host_read(loop._Run._shuffled))  # the epoch's order, copied in
    monkeypatch.setattr(loop._Run, "finish", host_read(loop._Run.finish))
    monkeypatch.setattr(loop, "_check_loss", host_read(loop._check_loss))
    monkeypatch.setattr(loop.GraphedStep, "_capture", host_read(loop.GraphedStep._capture))  # capture syncs itself
    settings = loop.TrainSettings(task=1, capacity=0.3, epochs=2, batch_size=10, lr=1e-3, seed=0)
    callbacks = loop.TrainCallbacks(on_epoch_start=lambda *_: torch.cuda.set_sync_debug_mode("error"))
    try:
        result = loop.train_task(model, data, settings, None, CUDA, callbacks, cuda_graphs=graphs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.cuda_graphs == ("on" if graphs else "off"), result.cuda_graphs


def test_a_failed_capture_on_cuda_restores_the_stream_and_goes_on_eagerly(monkeypatch):
    """A host read inside the captured step (here: a selection that calls .item()) makes the capture
    fail; the default stream is current again and the steps give the eager steps' bits."""
    from wsncli.engine.nn import subnet

    selection = subnet.static_topk_mask

    def syncing_selection(values, k):
        _ = float(values.sum())  # a host synchronisation: not permitted while capturing
        return selection(values, k)

    monkeypatch.setattr(subnet, "static_topk_mask", syncing_selection)
    results = []
    for graphed in (False, True):
        model, params, shape = _model("conv")
        opt = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=graphed)
        g = torch.Generator().manual_seed(1)
        batches = [
            (torch.randn(10, *shape, generator=g).to(CUDA), torch.randint(0, 10, (10,), generator=g).to(CUDA))
            for _ in range(8)
        ]

        def eager(x, y, model=model, opt=opt):
            logits = model(x, 1)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach() * x.shape[0], (logits.detach().argmax(1) == y).sum()

        model.eval()  # no dropout: the eager and the fallen-back run draw nothing
        step = GraphedStep(model, 1, opt, eager, 10) if graphed else eager
        losses = [step(x, y)[0].item() for x, y in batches]
        if graphed:
            assert step.failed is not None and step.graph is None
            assert torch.cuda.current_stream() == torch.cuda.default_stream()
            torch.rand(4, device=CUDA)  # the default generator is out of capture mode (this raised before)
        results.append((losses, [p.detach().cpu().clone() for p in params]))
    (la, pa), (lb, pb) = results
    assert la == lb and all(torch.equal(a, b) for a, b in zip(pa, pb))
