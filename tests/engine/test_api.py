"""The public Python API on a user network of unusual shape: masked(), Learner, forget-free invariants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wsncli as wsn
from wsncli.errors import FieldError, TaskError, UsageError


class Branchy(nn.Module):
    """Two branches, a layer used twice, strided/dilated/grouped convs, BatchNorm, a LayerNorm (shared)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(4, 4, (3, 1), stride=(2, 1), padding=(1, 0), groups=2), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(4, 4, 3, dilation=2, padding=2, bias=False), nn.BatchNorm2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.twice = nn.Linear(8, 8)  # applied twice
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))  # (B, 4, 6, 6)
        a = self.pool(self.left(h)).flatten(1)  # (B, 4)
        b = self.pool(self.right(h)).flatten(1)  # (B, 4)
        z = torch.cat([a, b], 1)  # (B, 8)
        z = torch.relu(self.twice(torch.relu(self.twice(z))))
        return self.out(self.norm(z))  # (B, 3)


def _data(seed: int, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _learn(learner, task: int, optimizer_cls, steps: int = 6, **opt) -> None:
    x, y = _data(task)
    with learner.learning(task) as net:
        optimizer = optimizer_cls(net.parameters(), **opt)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=False)  # zero grads: weight decay still acts on every tensor
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()


def _outputs(learner, task: int, x: torch.Tensor) -> torch.Tensor:
    with learner.using(task) as net, torch.no_grad():
        return net(x).clone()


@pytest.mark.parametrize(
    ("optimizer_cls", "opt"),
    [
        (torch.optim.SGD, {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.1}),
        (torch.optim.AdamW, {"lr": 0.05, "weight_decay": 0.5}),
    ],
)
def test_later_tasks_leave_earlier_tasks_bit_identical(optimizer_cls, opt):
    torch.manual_seed(0)
    net = wsn.masked(Branchy())
    report = wsn.masking_report(net)
    assert set(report.masked) == {"stem", "left.0", "right.0", "twice", "out"}
    assert report.per_task == ("right.1",) and report.shared == ("norm",)
    learner = wsn.Learner(net, capacity=0.3)
    probe = _data(99)[0]
    _learn(learner, 1, optimizer_cls, **opt)
    first = _outputs(learner, 1, probe)
    weights = {n: layer.weight.detach().clone() for n, layer in learner.layers.items()}
    norm = net.norm.weight.detach().clone()
    _learn(learner, 2, optimizer_cls, **opt)
    _learn(learner, 3, optimizer_cls, **opt)
    assert torch.equal(_outputs(learner, 1, probe), first)  # task 1's function, bit for bit
    for name, layer in learner.layers.items():
        kept = learner.masks[1][name]
        assert torch.equal(layer.weight.detach()[kept], weights[name][kept]), name
        assert not torch.equal(layer.weight.detach(), weights[name]), f"{name}: later tasks trained nothing"
    assert torch.equal(net.norm.weight.detach(), norm)  # the shared LayerNorm: first task only
    for use in learner.usage().values():  # exact density per layer and task
        assert set(use.kept.values()) == {round(0.3 * use.weights)}
    assert 0.3 < learner.used_fraction() <= 0.9


def test_outside_a_context_the_network_runs_no_task():
    net = wsn.masked(Branchy())
    learner = wsn.Learner(net)
    _learn(learner, 1, torch.optim.SGD, steps=1, lr=0.1)
    with pytest.raises(TaskError, match="no task chosen"):
        net(_data(1)[0])
    with pytest.raises(TaskError, match="task 2 is not learned"):
        with learner.using(2):
            pass
    with pytest.raises(TaskError, match="already learned"):
        with learner.learning(1):
            pass


def test_a_network_has_one_learner_and_tasks_are_positive_integers():
    """A second Learner on the same network would not know task 1 and would move its weights (found by
    a new user's review: task 1's outputs changed by up to 510, no error)."""
    import pickle

    net = wsn.masked(Branchy())
    learner = wsn.Learner(net)
    _learn(learner, 1, torch.optim.SGD, steps=1, lr=0.1)
    with pytest.raises(UsageError, match=r"already has a Learner \(tasks learned: \[1\]\)"):
        wsn.Learner(net)
    for bad in (0, -1, "3", True, 1.0):
        with pytest.raises(FieldError, match="task must be an integer"):
            with learner.learning(bad):
                pass
    pickle.dumps(net)  # the one-Learner rule leaves the network picklable
    del learner
    wsn.Learner(net)  # once the first Learner is gone, a network may get a new one


def test_a_failed_task_is_dropped_and_changes_nothing():
    net = wsn.masked(Branchy())
    learner = wsn.Learner(net, capacity=0.5)
    _learn(learner, 1, torch.optim.SGD, lr=0.1)
    probe = _data(5)[0]
    before = _outputs(learner, 1, probe)
    with pytest.raises(RuntimeError, match="boom"):
        with learner.learning(2) as module:
            optimizer = torch.optim.SGD(module.parameters(), lr=1.0, weight_decay=1.0)
            module(probe).sum().backward()
            optimizer.step()
            raise RuntimeError("boom")
    assert learner.tasks == [1] and "2" not in net.right[1].norms
    assert torch.equal(_outputs(learner, 1, probe), before)


def test_masked_refuses_what_it_cannot_mask():
    with pytest.raises(UsageError, match="already masked"):
        wsn.masked(wsn.masked(Branchy()))
    with pytest.raises(UsageError, match="cannot be masked"):
        wsn.masked(nn.Sequential(nn.Conv1d(1, 1, 3)))
    with pytest.raises(UsageError, match="padding_mode"):
        wsn.masked(nn.Sequential(nn.Conv2d(1, 1, 3, padding_mode="reflect")))
    with pytest.raises(UsageError, match="no nn.Linear"):
        wsn.masked(nn.Sequential(nn.ReLU()))
    with pytest.raises(UsageError, match="capacity"):
        wsn.Learner(wsn.masked(Branchy()), capacity=1.5)


def test_an_all_ones_mask_computes_the_users_layers_with_a_zero_bias():
    torch.manual_seed(1)
    dense = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, groups=1), nn.Flatten(), nn.Linear(27, 2, bias=False))
    x = torch.randn(4, 2, 6, 6)
    net = wsn.masked(dense)
    learner = wsn.Learner(net, capacity=1.0)
    with learner.learning(1):
        pass  # no step: the weights are the user's, the first task's bias starts at zero
    with learner.using(1) as module:
        got = module(x)
    conv = nn.functional.conv2d(x, net[0].weight, stride=2, padding=1)  # per-task bias is zero
    assert torch.equal(got, nn.functional.linear(conv.flatten(1), net[2].weight))


def test_errors_name_fields_and_the_command_layer_names_options(tmp_path):
    from tests.cli.helpers import assert_error, wsn
    from wsncli.engine.usecases.learn import TaskRequest, learn_task
    from wsncli.errors import FieldError

    with pytest.raises(FieldError, match=r"^channels must be 1 or 3, got 2$"):
        learn_task(TaskRequest(ckpt=tmp_path / "x.wsn", task=1, channels=2))
    with pytest.raises(FieldError, match=r"^batch_size must be between"):
        learn_task(TaskRequest(ckpt=tmp_path / "x.wsn", task=1, batch_size=0))
    assert_error(wsn("train-task", "-t", 1, "-c", tmp_path / "x.wsn", "--channels", 2), 2, "--channels must be 1 or 3")
    assert not (tmp_path / "x.wsn").exists()


def test_every_public_name_resolves_and_importing_wsncli_loads_no_torch():
    import subprocess
    import sys

    for name in wsn.__all__:
        assert getattr(wsn, name) is not None, name
    code = "import sys, wsncli; wsncli.__version__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        wsn.no_such_name  # noqa: B018


def test_a_checkpoint_task_is_a_learned_integer_task(tmp_path):
    """`ckpt.task("2")` said 'task 2 is not learned; learned: 1, 2' and `ckpt.task(True)` gave task 1."""
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    learn_task(TaskRequest(ckpt=tmp_path / "m.pt", task=1, epochs=1, device="cpu"))
    ckpt = wsn.open_checkpoint(tmp_path / "m.pt")
    for bad in ("1", True, 1.0):
        with pytest.raises(TaskError, match="a task is an integer"):
            ckpt.task(bad)
    with pytest.raises(TaskError, match="task 2 is not learned; learned: 1"):
        ckpt.task(2)
    assert isinstance(ckpt.task(1), nn.Module)
