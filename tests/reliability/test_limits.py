"""Never save what cannot be read back: every option value and every task that would give a
checkpoint the loader refuses (or a network that cannot be built) is refused before training, with
one line; a run that diverges saves nothing. wsn 0.1.1 trained and saved some of these
(`--batch-size 2**70`, 100,001 classes), then could not load the file it wrote."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.reliability.conftest import assert_one_line_error, run_python

N_FEATURES = 4


def _invoke(*args):
    from wsncli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def no_training(monkeypatch):
    """Training must never start: make it an error if it does."""
    import wsncli.engine.usecases.learn as learner

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(learner, "train_task", refuse)


def _refused_new(tmp_path, args, code, *needles):
    """train-task of a new checkpoint is refused with one line, and leaves the folder as it was."""
    before = sorted(p.name for p in tmp_path.iterdir())
    result = _invoke("train-task", "--task", 1, "--ckpt", tmp_path / "new.pt", "-q", *args)
    assert result.exit_code == code, (result.output, result.exception)
    assert_one_line_error(result.stderr, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no checkpoint, lock, temporary or snapshot


def _npz_root(tmp_path, **arrays) -> list:
    """A data root holding task1.npz with `arrays` (the rest a small valid 2-class task)."""
    rng = np.random.default_rng(0)
    base = {
        "x_train": rng.normal(size=(8, N_FEATURES)).astype(np.float32),
        "y_train": np.arange(8) % 2,
        "x_test": rng.normal(size=(4, N_FEATURES)).astype(np.float32),
        "y_test": np.arange(4) % 2,
    }
    root = tmp_path / "data"
    root.mkdir()
    np.savez(root / "task1.npz", **{**base, **arrays})
    return ["--benchmark", "npz", "--data-root", root, "--hidden", "8", "--epochs", "1"]


# ---- options ---------------------------------------------------------------------------------------------
def test_batch_size_beyond_what_a_checkpoint_stores_is_refused(tmp_path, no_training):
    _refused_new(tmp_path, ["--batch-size", 2**70], 2, "Invalid value for '--batch-size'", "16777216")


def test_a_network_over_the_weight_limit_is_refused_before_allocation(tmp_path):
    """--hidden 30000-30000 (900M weights, 7 GB with scores): refused on the meta device; peak memory
    of the whole command stays far below one layer's 3.6 GB."""
    code = (
        "import resource, sys\n"
        "from typer.testing import CliRunner\n"
        "from wsncli.app import app\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"r = CliRunner().invoke(app, ['train-task', '--task', '1', '--ckpt', {str(tmp_path / 'new.pt')!r}, "
        "'--hidden', '30000-30000', '-q'])\n"
        "print(r.exit_code)\nprint(r.stderr.strip())\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    exit_code, line, grown = result.stdout.strip().splitlines()
    assert (
        exit_code == "2" and line.startswith("wsn: error: ") and "masked weights, over the limit of 134217728" in line
    ), line
    assert int(grown) < 256, f"peak RSS grew by {grown} MiB"
    assert not (tmp_path / "new.pt").exists()


def test_a_diverging_learning_rate_saves_nothing(tmp_path):
    """--lr 1000 is within the option's range; on split-digits the loss explodes in epoch 1 (every
    seed tried): refused with the message, no checkpoint written."""
    result = _invoke("train-task", "--task", 1, "--ckpt", tmp_path / "new.pt", "--lr", 1000, "--epochs", 3, "-q")
    assert result.exit_code == 1, result.output
    assert_one_line_error(
        result.stderr, "task 1: the training loss", "in epoch 1; nothing was saved. Try a smaller --lr (now 1000)"
    )
    assert list(tmp_path.iterdir()) == []


# ---- task data -------------------------------------------------------------------------------------------
def test_more_classes_than_a_checkpoint_stores_are_refused(tmp_path, no_training):
    """100,001 distinct labels (one sample each): over MAX_CLASSES, refused before training."""
    n = 100_001
    args = _npz_root(
        tmp_path,
        x_train=np.zeros((n, 1), np.float32),
        y_train=np.arange(n),
        x_test=np.zeros((2, 1), np.float32),
        y_test=np.array([0, 1]),
    )
    _refused_new(tmp_path, args, 1, "100001 classes, over the limit of 100000")


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        (
            {"x_train": np.zeros((8, 1, 2, 2, 1), np.float32), "x_test": np.zeros((4, 1, 2, 2, 1), np.float32)},
            "samples have shape (1, 2, 2, 1); wsn takes 1 to 3 dimensions",
        ),
        (
            {"x_train": np.zeros((8, 65537), np.float32), "x_test": np.zeros((4, 65537), np.float32)},
            "samples have shape (65537,); each dimension must be at most 65536",
        ),
        (
            {"x_train": np.zeros((8, 0), np.float32), "x_test": np.zeros((4, 0), np.float32)},
            "samples have shape (0,), which holds no features",
        ),
        (
            {"y_train": np.array([2**63 + 5, 1] * 4, np.uint64)},
            "y_train holds 9223372036854775813, over the 64-bit integer range",
        ),
    ],
    ids=["4-d-inputs", "65537-features", "zero-features", "uint64-labels"],
)
def test_task_data_a_checkpoint_cannot_hold_is_refused(tmp_path, no_training, arrays, needle):
    _refused_new(tmp_path, _npz_root(tmp_path, **arrays), 1, needle)


def _npy_header(shape, descr="<f4") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def test_an_npy_header_declaring_128_tib_is_refused(tmp_path, no_training):
    """A member whose .npy header declares a (2**45, 1) float32 array over 16 bytes of data."""
    args = _npz_root(tmp_path)
    path = tmp_path / "data" / "task1.npz"
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("x_val.npy", _npy_header((2**45, 1)) + bytes(16))
        zf.writestr("y_val.npy", _npy_header((2,), "<i8") + bytes(16))
    _refused_new(
        tmp_path,
        args,
        1,
        "member 'x_val.npy' declares (35184372088832, 1) float32 (140737488355328 bytes) but holds only",
    )


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory):
    """task1.npz whose x_train.npy is a well-formed 1 GiB float32 array of zeros, deflated to ~1 MB."""
    root = tmp_path_factory.mktemp("bomb") / "data"
    root.mkdir()
    n = 1 << 30
    with zipfile.ZipFile(root / "task1.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x_train.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header((n // 4 // 64, 64)))
            chunk = bytes(16 << 20)
            for _ in range(n // len(chunk)):
                fh.write(chunk)
        for name, arr in (
            ("y_train", np.zeros(n // 4 // 64, np.int64)),
            ("x_test", np.zeros((4, 64), np.float32)),
            ("y_test", np.zeros(4, np.int64)),
        ):
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, arr)
    assert (root / "task1.npz").stat().st_size < 4 << 20
    return root


def test_a_zip_bomb_is_refused_without_inflating_it(zip_bomb, tmp_path):
    """Refused on the sizes its zip directory declares: the command's peak memory stays small and
    it never reads the member (an inflating reader would need 1 GiB)."""
    code = (
        "import resource, sys\n"
        "from typer.testing import CliRunner\n"
        "from wsncli.app import app\n"
        "import wsncli.engine.data.readers as R\n"
        "def never(*a, **k):\n    raise AssertionError('an array was read')\n"
        "R.np.lib.format.read_array = never\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"r = CliRunner().invoke(app, ['train-task', '--task', '1', '--ckpt', {str(tmp_path / 'new.pt')!r}, "
        "'--benchmark', 'npz',\n"
        f"    '--data-root', {str(zip_bomb)!r}, '-q'])\n"
        "print(r.exit_code)\nprint(r.stderr.strip())\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    exit_code, line, grown = result.stdout.strip().splitlines()
    assert exit_code == "1", line
    assert (
        line.startswith("wsn: error: ") and "member 'x_train.npy' expands" in line and "refused as a zip bomb" in line
    ), line
    assert int(grown) < 128, f"peak RSS grew by {grown} MiB"
    assert not (tmp_path / "new.pt").exists()
