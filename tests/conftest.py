"""Shared fixtures: small trained checkpoints made once per session and copied per test."""

from __future__ import annotations

import copy
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

# split-digits tasks learned out of id order (so "learning order" is observable), with different
# capacities; 0.123 makes round(c·n) differ from truncation on the 6,400- and 10,000-weight layers.
DIGITS_ORDER = (2, 1, 3)
DIGITS_CAPACITY = {2: 0.3, 1: 0.123, 3: 0.3}
DIGITS_EPOCHS = 2
CONV_SHAPE = (1, 20, 20)  # the smallest convenient image for the paper's conv net (minimum is 19x19)


@pytest.fixture(autouse=True)
def _no_data_root_env(monkeypatch):
    """Tests never see the developer's $WSN_DATA_ROOT."""
    monkeypatch.delenv("WSN_DATA_ROOT", raising=False)


@pytest.fixture(autouse=True)
def _data_checksums(monkeypatch, tmp_path_factory):
    """$WSN_DATA_CHECKSUMS names an empty file per test: the pinned digests apply until a test lists the
    files it generated (tests/datafiles.py)."""
    path = tmp_path_factory.mktemp("checksums") / "SHA256SUMS"
    path.write_text("")
    monkeypatch.setenv("WSN_DATA_CHECKSUMS", str(path))


def _learn(path: Path, task: int, **kwargs):
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    return learn_task(TaskRequest(ckpt=path, task=task, device="cpu", **kwargs))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> SimpleNamespace:
    """A wsn split-digits checkpoint with tasks 2, 1, 3 learned, plus a copy after each task."""
    folder = tmp_path_factory.mktemp("digits")
    path = folder / "m.pt"
    after = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSN_DATA_ROOT", raising=False)
        for task in DIGITS_ORDER:
            _learn(path, task, capacity=DIGITS_CAPACITY[task], epochs=DIGITS_EPOCHS)
            after[task] = folder / f"after-task{task}.pt"
            shutil.copyfile(path, after[task])
    return SimpleNamespace(path=path, after=after, order=DIGITS_ORDER, capacity=DIGITS_CAPACITY)


@pytest.fixture
def digits_ckpt(digits_run, tmp_path) -> Path:
    """A private copy of the 3-task split-digits checkpoint (tests may change it)."""
    path = tmp_path / "m.pt"
    shutil.copyfile(digits_run.path, path)
    return path


@pytest.fixture(scope="session")
def finetune_master(tmp_path_factory) -> Path:
    """A dense fine-tune baseline checkpoint on split-digits, tasks 1 and 2."""
    path = tmp_path_factory.mktemp("finetune") / "ft.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSN_DATA_ROOT", raising=False)
        for task in (1, 2):
            _learn(path, task, method="finetune", epochs=2)
    return path


@pytest.fixture
def finetune_ckpt(finetune_master, tmp_path) -> Path:
    path = tmp_path / "ft.pt"
    shutil.copyfile(finetune_master, path)
    return path


def image_task(task: int, n_train: int = 32, n_test: int = 16, shape=CONV_SHAPE, seed: int = 0):
    """A small 2-class image task (TaskData) whose classes differ by a per-task pattern."""
    from wsncli.engine.data.preprocess import scaled
    from wsncli.engine.data.registry import TaskData

    rng = np.random.default_rng(seed * 100 + task)
    pattern = rng.normal(size=shape).astype(np.float32)

    def split(n):
        y = (np.arange(n) % 2).astype(np.int64)
        x = rng.normal(size=(n, *shape)).astype(np.float32) + np.where(y == 1, 1.0, -1.0)[:, None, None, None] * pattern
        return x.astype(np.float32), y

    (xtr, ytr), (xva, yva), (xte, yte) = split(n_train), split(8), split(n_test)
    return TaskData("npz", task, (0, 1), xtr, ytr, xva, yva, xte, yte, scaled(1.0))


@pytest.fixture(scope="session")
def conv_run() -> SimpleNamespace:
    """The paper's conv net (per-task BatchNorm) trained on 3 small image tasks, engine level.

    Returns the model, each task's mask, the full state_dict after each task, the data, and each
    task's test logits right after it was learned.
    """
    threads = min(4, os.cpu_count() or 1)  # wsn sets 1 thread for small models; this one is big
    with torch_threads(threads):
        return SimpleNamespace(**vars(_train_conv()), threads=threads)


@contextmanager
def torch_threads(n: int):
    """Run with n torch threads. Conv outputs are bit-identical only at the same thread count, and
    in-process `learn_task` calls change the count, so compare conv outputs inside this."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_conv() -> SimpleNamespace:
    from wsncli.engine.nn.models import ModelConfig, build_model
    from wsncli.engine.training.loop import TrainSettings, train_task
    from wsncli.engine.usecases.outputs import set_task_mode

    torch.manual_seed(0)
    model = build_model(ModelConfig("conv", CONV_SHAPE))
    masks: dict[int, dict[str, torch.Tensor]] = {}
    states, data, logits = {}, {}, {}
    for task in (1, 2, 3):
        data[task] = image_task(task)
        model.add_task(task, 2)
        frozen = None
        if masks:
            frozen = {n: torch.stack([m[n] for m in masks.values()]).any(0) for n in masks[1]}
        settings = TrainSettings(
            task=task, capacity=0.1, epochs=1, batch_size=16, lr=1e-3, seed=0
        )  # 2 steps: step 1 uses m_{t-1}, all frozen
        result = train_task(model, data[task], settings, frozen, torch.device("cpu"))
        masks[task] = result.masks
        states[task] = copy.deepcopy(model.state_dict())
        set_task_mode(model, masks[task])
        with torch.no_grad():
            logits[task] = model(torch.from_numpy(data[task].x_test), task)  # (N, 2)
    return SimpleNamespace(model=model, masks=masks, states=states, data=data, logits=logits)
