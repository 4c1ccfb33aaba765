"""Precise BatchNorm statistics (training.batchnorm): exact per-sample moments over the training split,
only the task's own BatchNorm touched, deterministic; and the small image set of issue 16 learned
beyond chance at the defaults (it sat at 50% with momentum statistics)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.training.batchnorm import batch_bounds, recompute_statistics

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


class _Split:
    """The parts of a DeviceSplit that recompute_statistics reads."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _net():
    torch.manual_seed(0)
    model = build_model(ModelConfig("resnet18", (2, 9, 9), width=4))
    model.add_task(1, 2)
    model.add_task(2, 2)
    return model


def _norm_state(model, task: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.task_norms[str(task)].state_dict().items()}


def test_statistics_are_the_exact_per_sample_mean_and_variance_of_the_training_split():
    model = _net()
    x = torch.randn(37, 2, 9, 9) * 3 + 1  # batches of 16, 16 and 5: uneven
    assert recompute_statistics(model, 1, _Split(x), 16)
    with torch.no_grad():
        first = model.conv1(x).double()  # the stem's BatchNorm input does not depend on the batching
    want_mean = first.mean((0, 2, 3))
    want_var = first.transpose(0, 1).reshape(first.shape[1], -1).var(1)  # unbiased, as torch's running_var
    norm = model.task_norms["1"][0]
    torch.testing.assert_close(norm.running_mean.double(), want_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norm.running_var.double(), want_var, rtol=1e-6, atol=1e-6)
    # a batch average (torch's momentum=None) would weigh the last 5 samples like 16: not what is stored
    batch_means = torch.stack([first[i : i + 16].mean((0, 2, 3)) for i in (0, 16, 32)]).mean(0)
    assert not torch.allclose(norm.running_mean.double(), batch_means, rtol=1e-6, atol=1e-6)


def test_only_the_tasks_own_statistics_change_and_the_pass_is_deterministic():
    model = _net()
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("task_norms.1.")}
    x = torch.randn(33, 2, 9, 9)  # 16 + 16 + 1: the lone last sample joins the batch before
    recompute_statistics(model, 1, _Split(x), 16)
    after = {k: v for k, v in model.state_dict().items() if not k.startswith("task_norms.1.")}
    assert weights.keys() == after.keys() and all(torch.equal(weights[k], after[k]) for k in weights)
    once = _norm_state(model, 1)
    assert not torch.equal(once["0.running_mean"], torch.zeros_like(once["0.running_mean"]))
    recompute_statistics(model, 1, _Split(x), 16)
    assert all(torch.equal(once[k], v) for k, v in _norm_state(model, 1).items())
    assert not model.training  # left in eval mode, dropout off


def testbatch_bounds_join_a_lone_last_sample_to_the_batch_before():
    assert batch_bounds(33, 16) == [(0, 16), (16, 33)]
    assert batch_bounds(37, 16) == [(0, 16), (16, 32), (32, 37)]
    assert batch_bounds(1, 16) == [(0, 1)]


def test_nets_without_batchnorm_are_left_alone():
    model = build_model(ModelConfig("mlp", (4,), (8,)))
    model.add_task(1, 2)
    assert not recompute_statistics(model, 1, _Split(torch.randn(10, 4)), 4)


def test_small_image_task_at_the_defaults_is_learned_beyond_chance(tmp_path):
    """Issue 16: 40 PNGs per class, 32x32, default batch (64), 4 epochs: resnet18 sat at 50% (chance)
    with momentum statistics; with exact ones it learns the task."""
    sys.path.insert(0, str(BENCH))
    try:
        from small_images import make_image_tasks
    finally:
        sys.path.remove(str(BENCH))
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    make_image_tasks(tmp_path / "img", per_class=40, test_per_class=20, tasks=(1,))
    result = learn_task(
        TaskRequest(
            ckpt=tmp_path / "m.pt", task=1, benchmark="image-folder", data_root=tmp_path / "img", epochs=4, device="cpu"
        )
    )
    assert result.record.accuracy >= 0.9, result.train.history
    assert np.isclose(result.record.accuracy * 40, round(result.record.accuracy * 40))


def test_a_last_training_batch_of_one_sample_joins_the_batch_before(images, tmp_path):
    """Issue 15's finding: conv (BatchNorm1d) with a last batch of exactly one sample raised a ValueError
    traceback. The images' 58 training samples in batches of 19 leave one over."""
    from wsncli.engine.training.loop import TrainCallbacks
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    starts: list[int] = []
    request = TaskRequest(
        ckpt=tmp_path / "m.pt", task=1, benchmark="npz", data_root=images, arch="conv", epochs=1, batch_size=19
    )
    result = learn_task(request, TrainCallbacks(on_epoch_start=lambda epoch, n_batches: starts.append(n_batches)))
    assert result.record.accuracy >= 0.0 and starts == [3]  # 19 + 19 + 20, not 19 + 19 + 19 + 1
