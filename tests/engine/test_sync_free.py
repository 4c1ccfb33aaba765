"""The device path (the static selection, no C kernels) never needs the host between steps.

What CUDA runs is run here on the CPU: every architecture trains two epochs through `train_task`
with the static selection (`set_static_selection`), under a mode that fails on every operation a GPU
would have to wait for (tests/engine/host_sync.py). Only the loop's deliberate reads may need the
host: task set-up and finish, the end of each epoch, and the loss check every CHECK_EVERY steps.
So selection, forward, loss, backward, the optimizer step, dropout, the input transform and what
the loop does between steps (adding the step's loss and correct count, the progress callback) are
free of host synchronisation and data-dependent shapes, which CUDA-graph capture needs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import image_task, torch_threads
from tests.engine.host_sync import HostSync, HostSyncGuard
from wsncli.engine.data.preprocess import scaled
from wsncli.engine.data.registry import TaskData
from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.nn.selection import static_topk_mask
from wsncli.engine.nn.subnet import set_static_selection
from wsncli.engine.training import loop

SHAPES = {"conv": (1, 20, 20), "resnet18": (1, 9, 9), "lenet": (1, 16, 16), "conv4": (1, 8, 8)}
N_TRAIN, BATCH, CHECK_EVERY, EPOCHS = 28, 8, 2, 2  # 4 steps per epoch, the last one smaller


def _permuted_uint8_task() -> TaskData:
    """An MLP task as PMNIST gives it: uint8 inputs, divided by 255 and permuted on the device."""
    rng = np.random.default_rng(0)
    y = (np.arange(N_TRAIN + 16) % 2).astype(np.int64)
    x = rng.integers(0, 200, (len(y), 64)).astype(np.uint8)
    x[y == 1, :8] = 255
    prep = scaled(255.0, divide=True, permutation=rng.permutation(64))
    return TaskData("npz", 1, (0, 1), x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:36], y[N_TRAIN:36], x[36:], y[36:], prep)


def _setup(arch: str):
    torch.manual_seed(0)
    if arch == "mlp":
        data, config = _permuted_uint8_task(), ModelConfig("mlp", (64,), (32, 32))
    else:
        data = image_task(1, n_train=N_TRAIN, shape=SHAPES[arch])
        config = ModelConfig(arch, SHAPES[arch], width=4 if arch == "resnet18" else None)
    model = build_model(config)
    model.add_task(1, 2)
    set_static_selection(model)
    g = torch.Generator().manual_seed(1)
    frozen = {n: torch.rand(l.weight.shape, generator=g) < 0.3 for n, l in model.subnet_layers().items()}
    return model, data, frozen


@pytest.mark.parametrize("arch", ["mlp", "conv", "resnet18", "lenet", "conv4"])
def test_every_architecture_trains_on_the_device_path_without_host_synchronisation(arch, monkeypatch):
    model, data, frozen = _setup(arch)
    monkeypatch.setattr(loop, "CHECK_EVERY", CHECK_EVERY)
    monkeypatch.setattr(loop, "DEVICE_FLOAT_BUDGET", 0)  # uint8 inputs: transformed batch by batch, on the device
    checks = []
    check_loss = loop._check_loss
    monkeypatch.setattr(loop, "_check_loss", lambda *a: (checks.append(a[1]), check_loss(*a)))
    steps = []
    callbacks = loop.TrainCallbacks(on_epoch_start=lambda e, n: None, on_batch_end=steps.append)
    settings = loop.TrainSettings(task=1, capacity=0.3, epochs=EPOCHS, batch_size=BATCH, lr=1e-3, seed=0)
    allowed = (loop._Run.__init__, loop._Run._end_epoch, check_loss, loop._Run.finish)
    with torch_threads(1), HostSyncGuard(allowed) as guard:  # one thread, as wsn trains small networks
        result = loop.train_task(model, data, settings, frozen, torch.device("cpu"), callbacks)
    assert guard.violations == []
    assert len(steps) == EPOCHS * 4 and result.masks is not None
    # the loss is read every CHECK_EVERY steps and once per epoch, never per step
    assert len(checks) == EPOCHS * (4 // CHECK_EVERY + 1)
    assert guard.allowed_hits["_end_epoch"] > 0 and guard.allowed_hits["_check_loss"] > 0
    # the mode saw the whole step: the static selection, backward and the optimizer
    seen = set(guard.ops)
    assert {"scatter_add_", "cumsum", "gather"} <= seen, "the static selection ran"
    assert any(op.endswith("_backward") for op in seen) and "_fused_adam_" in seen
    assert all(int(result.masks[n].sum()) == l.k for n, l in model.subnet_layers().items())


def test_the_static_selection_alone_needs_no_host():
    values = torch.rand(5000, generator=torch.Generator().manual_seed(0))
    with HostSyncGuard() as guard:
        mask = static_topk_mask(values, 1234)
    assert guard.violations == [] and int(mask.sum()) == 1234


@pytest.mark.parametrize(
    "operation",
    [
        lambda t: t.sum().item(),
        lambda t: bool(t[0] > 0),
        lambda t: t[t > 0.5],
        lambda t: t[torch.tensor(3)],  # indexing with a 0-d tensor reads it on the host
        lambda t: t.nonzero(),
        lambda t: torch.equal(t, t),
        lambda t: t.tolist(),
        lambda t: t.cpu(),
        lambda t: torch.unique(t),
        lambda t: t.clone().masked_fill_(t > 0.5, 0.0)[t > 0.9],
        lambda t: torch.repeat_interleave(torch.tensor([1, 2])),
    ],
    ids=["item", "bool", "mask-index", "0d-index", "nonzero", "equal", "tolist", "cpu", "unique", "mask-2", "repeat"],
)
def test_the_guard_catches_what_would_synchronise(operation):
    t = torch.rand(10)
    with pytest.raises(HostSync), HostSyncGuard():
        operation(t)
