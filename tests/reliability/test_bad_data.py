"""Bad task data (npz benchmark) is refused before training: one line, exit 1, checkpoint untouched."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.reliability.conftest import assert_one_line_error, temp_files

N_FEATURES = 16


def _task(seed: int, classes=(0, 1), n_train=40, n_test=12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def split(n):
        y = np.asarray(classes)[np.arange(n) % len(classes)].astype(np.int64)
        x = rng.normal(size=(n, N_FEATURES)).astype(np.float32) + y[:, None]
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train), split(n_test)
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}


def _with(key, change):
    def make():
        arrays = _task(2, (2, 3))
        arrays[key] = change(arrays[key])
        return arrays

    return make


def _nan(x):
    x = x.copy()
    x[3, 5] = np.nan
    return x


def _inf(x):
    x = x.copy()
    x[0, 0] = np.inf
    return x


BAD = {
    "nan-inputs": (_with("x_train", _nan), "x_train contains 1 NaN values"),
    "infinite-inputs": (_with("x_test", _inf), "x_test contains 1 infinite values"),
    "empty-task": (
        lambda: {
            **_task(2, (2, 3)),
            "x_train": np.zeros((0, N_FEATURES), np.float32),
            "y_train": np.zeros(0, np.int64),
        },
        "the train set is empty",
    ),
    "label-outside-classes": (
        _with("y_test", lambda y: np.where(np.arange(len(y)) == 0, 9, y)),
        "test labels {9} are not among the task's classes [2, 3]",
    ),
    "wrong-image-shape": (
        _with("x_train", lambda x: np.zeros((len(x), N_FEATURES + 1), np.float32)),
        "samples have shape (17,)",
    ),
    "too-few-labels": (_with("y_train", lambda y: y[:-1]), "x_train has 40 samples but y_train has 39 labels"),
    "float-labels": (_with("y_train", lambda y: y.astype(np.float32)), "labels must be integers"),
    "missing-array": (lambda: {k: v for k, v in _task(2, (2, 3)).items() if k != "y_test"}, "lacks array(s) y_test"),
    "val-nan": (
        lambda: {
            **_task(2, (2, 3)),
            "x_val": np.full((4, N_FEATURES), np.nan, np.float32),
            "y_val": np.array([2, 3, 2, 3]),
        },
        "x_val contains 64 NaN values",
    ),
}


def _invoke(args):
    from wsncli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _train(ckpt, root, task):
    return _invoke(
        [
            "train-task",
            "--task",
            task,
            "--ckpt",
            ckpt,
            "--benchmark",
            "npz",
            "--data-root",
            root,
            "--hidden",
            "8",
            "--epochs",
            "1",
            "-q",
        ]
    )


@pytest.fixture(scope="module")
def npz_task1(tmp_path_factory):
    """A data root with a good task 1 and a checkpoint that learned it."""
    folder = tmp_path_factory.mktemp("npz")
    root = folder / "data"
    root.mkdir()
    np.savez(root / "task1.npz", **_task(1))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WSN_DATA_ROOT", raising=False)
        result = _train(folder / "m.pt", root, 1)
    assert result.exit_code == 0, result.output
    return root, folder / "m.pt"


@pytest.fixture
def no_training(monkeypatch):
    """Training must never start on bad data: make it an error if it does."""
    import wsncli.engine.usecases.learn as learner

    def refuse(*args, **kwargs):
        raise AssertionError("training started on bad data")

    monkeypatch.setattr(learner, "train_task", refuse)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_task_refused_checkpoint_untouched(npz_task1, tmp_path, no_training, case):
    make, message = BAD[case]
    root0, master = npz_task1
    root = tmp_path / "data"
    shutil.copytree(root0, root)
    np.savez(root / "task2.npz", **make())
    ckpt = tmp_path / "m.pt"
    shutil.copyfile(master, ckpt)
    before = ckpt.read_bytes()
    result = _train(ckpt, root, 2)
    assert result.exit_code == 1, (result.output, result.exception)
    assert_one_line_error(result.stderr, message)
    assert ckpt.read_bytes() == before and temp_files(tmp_path) == []


@pytest.mark.parametrize("case", [c for c in BAD if c != "wrong-image-shape"])
def test_bad_first_task_creates_no_checkpoint(tmp_path, no_training, case):
    make, message = BAD[case]
    root = tmp_path / "data"
    root.mkdir()
    np.savez(root / "task1.npz", **make())
    ckpt = tmp_path / "new.pt"
    result = _train(ckpt, root, 1)
    assert result.exit_code == 1, (result.output, result.exception)
    assert_one_line_error(result.stderr, message)
    assert not ckpt.exists() and temp_files(tmp_path) == []


def test_corrupt_npz_file_is_one_line(npz_task1, tmp_path, no_training):
    root0, master = npz_task1
    root = tmp_path / "data"
    shutil.copytree(root0, root)
    (root / "task2.npz").write_bytes(b"PK\x03\x04 not really a zip")
    ckpt = tmp_path / "m.pt"
    shutil.copyfile(master, ckpt)
    before = ckpt.read_bytes()
    result = _train(ckpt, root, 2)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "task2.npz", "not an npz file")
    assert ckpt.read_bytes() == before
