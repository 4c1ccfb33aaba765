"""Fixtures of the engine tests: the reference runs the multi-process tests compare against."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.engine.torchrun import learn_here, torchrun

# The reference request of the multi-process tests: split-digits task 1, 2 epochs (a snapshot after
# the first), default batch 32 (259 samples: 9 steps, the last of 3), one thread per process.
REFERENCE = ("--task", 1, "--epochs", 2, "--no-matrix", "--threads", 1, "-q")
# The BatchNorm and dropout network `conv` on a small image set (below): 64 samples, batch 15 (the
# processes' parts are 7 and 8, the last batch of 4 splits 2/2), 5 steps per epoch. Without npz's
# default per-task biases: they leave one step's gradients equal up to reduction order (1e-6 relative,
# measured) but make two epochs of Adam amplify that noise past ATOL in ~2% of fcs.1's weights.
CONV_OPTIONS = dict(benchmark="npz", arch="conv", epochs=2, batch_size=15, matrix=False, bias=False)
CONV_STEPS_PER_EPOCH = 5


def conv_args(images) -> list:
    return ["--task", 1, "--benchmark", "npz", "--data-root", images, "--arch", "conv", "--epochs", 2,
            "--batch-size", 15, "--no-matrix", "--threads", 1, "--no-bias", "-q"]  # fmt: skip


@pytest.fixture(scope="session")
def fresh_pair(tmp_path_factory) -> SimpleNamespace:
    """The reference request trained fresh by 2 torchrun processes (`par`) and by one process (`one`)."""
    folder = tmp_path_factory.mktemp("fresh-pair")
    proc = torchrun(folder, "train-task", "--ckpt", "par.pt", *REFERENCE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    learn_here(folder / "one.pt", 1, epochs=2, matrix=False)
    return SimpleNamespace(par=folder / "par.pt", one=folder / "one.pt", stdout=proc.stdout)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A small 2-class image task as npz: 64 training and 24 test 1x20x20 images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 2, (1, 20, 20)).astype(bool)

    def split(n):
        y = (np.arange(n) % 2).astype(np.int64)
        x = rng.integers(0, 120, (n, 1, 20, 20))
        x[y == 1] += 100 * pattern
        return x.astype(np.uint8), y

    (xtr, ytr), (xte, yte) = split(64), split(24)
    np.savez(folder / "task1.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return folder


@pytest.fixture(scope="session")
def conv_pair(tmp_path_factory, images) -> SimpleNamespace:
    """conv (per-task BatchNorm, dropout) trained by 2 torchrun processes (`par`) and by one (`one`)."""
    folder = tmp_path_factory.mktemp("conv-pair")
    proc = torchrun(folder, "train-task", "--ckpt", "par.pt", *conv_args(images))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    learn_here(folder / "one.pt", 1, data_root=images, **CONV_OPTIONS)
    return SimpleNamespace(par=folder / "par.pt", one=folder / "one.pt")
