"""One line, never a traceback: a data root no file system can open, a record whose optional fields are
null, an image that is a symlink to itself, float64 data beyond float32 (no numpy warnings before the
refusal), and `report -o DIR` on a full disk (no empty DIR left behind)."""

from __future__ import annotations

import resource
import signal

import numpy as np
import pytest

from tests.ckpt_tools import edit_meta
from tests.cli.helpers import assert_error, wsn
from tests.reliability.conftest import assert_one_line_error, run_wsn
from tests.reliability.trust_tools import learn

LONG = "a" * 300  # one path component over the 255 bytes of NAME_MAX


@pytest.fixture
def npz_root(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for task in (1, 2):
        x = rng.normal(size=(40, 5)).astype(np.float32)
        y = np.arange(40) % 2
        np.savez(folder / f"task{task}.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    return folder


def test_a_data_root_with_a_component_over_255_bytes(npz_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    long_root = tmp_path / LONG / "data"
    ckpt = tmp_path / "m.pt"
    train = ("train-task", "--benchmark", "npz", "--epochs", 1, "--device", "cpu", "-q", "--ckpt", ckpt)
    assert_error(wsn(*train, "--task", 1, "--data-root", long_root), 1, "a component of 300 bytes", "over the limit")
    assert not ckpt.exists()
    assert wsn(*train, "--task", 1, "--data-root", npz_root).exit_code == 0
    assert_error(wsn(*train, "--task", 2, "--data-root", long_root), 1, "a component of 300 bytes")
    assert_error(wsn("eval", "--ckpt", ckpt, "--data-root", long_root), 1, "a component of 300 bytes")
    edit_meta(ckpt, lambda m: m.__setitem__("data_root", str(long_root)))  # the recorded one
    assert_error(wsn("eval", "--ckpt", ckpt), 1, "a component of 300 bytes", "the checkpoint")


@pytest.mark.parametrize("field", ["lr", "epochs", "batch_size"])
@pytest.mark.parametrize("how", ["null", "missing"])
def test_inspect_shows_a_record_whose_optional_fields_are_null(tmp_path, monkeypatch, field, how):
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt = tmp_path / "m.pt"
    learn(ckpt, 1, epochs=1)

    def change(meta):
        if how == "null":
            meta["tasks"][0][field] = None
        else:
            del meta["tasks"][0][field]
        from tests.reliability.spec_reader import record_digest

        meta["tasks"][0]["record_digest"] = record_digest(meta, meta["tasks"][0])

    edit_meta(ckpt, change)
    result = wsn("inspect", ckpt)
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    assert "tasks in learning order (1)" in result.stdout


def test_an_image_that_is_a_symlink_to_itself(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "imgs" / "task1" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8)).save(folder / f"{i}.png")
    loop = tmp_path / "imgs" / "task1" / "train" / "a" / "x.png"
    loop.symlink_to("x.png")
    args = ("train-task", "--benchmark", "image-folder", "--arch", "mlp", "--task", 1, "--epochs", 1, "-q")
    assert_error(
        wsn(*args, "--ckpt", tmp_path / "m.pt", "--data-root", tmp_path / "imgs"),
        1,
        str(loop),
        "Too many levels of symbolic links",
    )


def test_float64_beyond_float32_is_refused_without_numpy_warnings(tmp_path):
    """A real process (pytest would swallow the warnings an in-process run prints)."""
    folder = tmp_path / "data"
    folder.mkdir()
    x = np.full((40, 5), 1e300)
    np.savez(folder / "task1.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:10], y_test=np.arange(10) % 2)
    args = ["train-task", "--benchmark", "npz", "--task", 1, "--ckpt", tmp_path / "m.pt", "--data-root", folder]
    result = run_wsn([*args, "-q"], tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "x_train holds values up to 1e+300, beyond float32's range")


def test_report_on_a_full_disk_leaves_no_empty_folder(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt = tmp_path / "m.pt"
    learn(ckpt, 1, epochs=1)

    def tiny_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # every write past 64 bytes fails (EFBIG)

    out = tmp_path / "report"
    result = run_wsn(["report", "--ckpt", ckpt, "-o", out, "-q"], tmp_path, preexec=tiny_files)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "cannot write", "File too large")
    assert not out.exists()


def test_a_transform_that_overflows_in_eval_prints_no_numpy_warnings(tmp_path, monkeypatch):
    """A stored std edited to 1e-45 (checksums recomputed): eval finds the changed subnetwork (exit 3)
    with one line; the overflow it computes on the way prints nothing (wsn 0.2.0 printed numpy's
    RuntimeWarning first). A real process: pytest would swallow the warnings."""
    from tests.ckpt_tools import edit_arrays

    monkeypatch.delenv("WSN_CHECKPOINT_KEY", raising=False)
    ckpt = tmp_path / "m.pt"
    learn(ckpt, 1, epochs=1)
    edit_arrays(ckpt, lambda a: a["prep/1/std"].__setitem__(..., np.float32(1e-45)))
    result = run_wsn(["eval", "--ckpt", ckpt], tmp_path)
    assert result.returncode == 3
    assert_one_line_error(result.stderr, "forgetting detected")
