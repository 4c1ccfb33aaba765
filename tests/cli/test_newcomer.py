"""What a newcomer hit (issue 16): each defect's fix, one test each."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.errors import TaskError


def _png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _image_task(root: Path, side: int, rgb: bool, n: int = 4) -> Path:
    """root/task1/{train,test}/{a,b}/*.png: a bright left or right half (class a / b)."""
    rng = np.random.default_rng(side)
    for split in ("train", "test"):
        for cls, half in (("a", slice(0, side // 2)), ("b", slice(side // 2, side))):
            for i in range(n):
                px = rng.integers(0, 60, size=(side, side, 3) if rgb else (side, side)).astype(np.uint8)
                px[:, half] = 220
                _png(root / "task1" / split / cls / f"{i}.png", px)
    return root


@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory) -> SimpleNamespace:
    """A conv4 checkpoint learned on 8x8 gray images (1 epoch)."""
    root = tmp_path_factory.mktemp("newcomer")
    data = _image_task(root / "gray8", 8, rgb=False)
    ckpt = root / "img.pt"
    assert_ok(wsn("train-task", "-c", ckpt, "-t", 1, "--benchmark", "image-folder", "--data-root", data,
                  "--arch", "conv4", "--epochs", 1, "-q"))  # fmt: skip
    return SimpleNamespace(root=root, ckpt=ckpt)


# ---- eval --data-root pointing at other data: one line, exit 1, both shapes -------------------------


def test_eval_on_images_of_another_channel_count_or_size_names_both_shapes(image_ckpt):
    rgb = _image_task(image_ckpt.root / "rgb8", 8, rgb=True)
    assert_error(wsn("eval", "-c", image_ckpt.ckpt, "--data-root", rgb), 1, "shape (3, 8, 8)", "shape (1, 8, 8)")
    big = _image_task(image_ckpt.root / "gray12", 12, rgb=False)
    assert_error(wsn("eval", "-c", image_ckpt.ckpt, "--data-root", big), 1, "shape (1, 12, 12)", "shape (1, 8, 8)")


def test_eval_on_npz_data_of_another_feature_count_names_both_shapes(tmp_path):
    rng = np.random.default_rng(0)
    for folder, d in (("six", 6), ("four", 4)):
        (tmp_path / folder).mkdir()
        y = np.arange(20) % 2
        np.savez(tmp_path / folder / "task1.npz", x_train=rng.normal(size=(20, d)), y_train=y,
                 x_test=rng.normal(size=(20, d)), y_test=y)  # fmt: skip
    ckpt = tmp_path / "m.pt"
    assert_ok(wsn("train-task", "-c", ckpt, "-t", 1, "--benchmark", "npz", "--data-root", tmp_path / "six",
                  "--epochs", 1, "-q"))  # fmt: skip
    assert_error(wsn("eval", "-c", ckpt, "--data-root", tmp_path / "four"), 1, "shape (4,)", "shape (6,)")


# ---- report ---------------------------------------------------------------------------------------


def test_accuracy_over_time_title_says_what_the_data_shows():
    from wsncli.engine.usecases.report import over_time_title

    nan = math.nan
    flat = np.array([[1.0, nan], [1.0, 0.9]])
    assert over_time_title([1, 2], flat).endswith(": flat, nothing forgotten")
    fell = np.array([[1.0, nan, nan], [0.7, 0.9, nan], [0.556, 0.8, 1.0]])
    assert over_time_title([1, 2, 3], fell).endswith(": task 1 fell from 100.0% to 55.6% (1 more fell)")
    rose = np.array([[0.5, nan], [0.75, 1.0]])
    assert over_time_title([4, 2], rose).endswith(": task 4 rose from 50.0% to 75.0%")


def test_capacity_plot_groups_resnet18s_layers_by_stage():
    from wsncli.engine.nn.models import ModelConfig, count_parameters
    from wsncli.engine.usecases.report import layer_groups

    names = list(count_parameters(ModelConfig("resnet18", (3, 32, 32)))["layers"])
    groups = layer_groups([SimpleNamespace(name=n) for n in names])
    assert [label for label, _ in groups] == [
        "conv1",
        "layer1 (4 layers)",
        "layer2 (5 layers)",
        "layer3 (5 layers)",
        "layer4 (5 layers)",
    ]
    assert sum(len(m) for _, m in groups) == len(names) == 20
    few = [SimpleNamespace(name=n) for n in ("convs.0", "convs.1", "fcs.0")]
    assert [label for label, _ in layer_groups(few)] == ["convs.0", "convs.1", "fcs.0"]


def test_report_makes_only_its_own_folder_like_every_output(digits_ckpt, tmp_path):
    assert_error(wsn("report", "-c", digits_ckpt, "-o", tmp_path / "no" / "such"), 1, "folder", "does not exist")
    assert not (tmp_path / "no").exists()
    assert_error(wsn("pack-masks", "-c", digits_ckpt, "-o", tmp_path / "no" / "m.wsnm"), 1, "does not exist")
    assert_ok(wsn("report", "-c", digits_ckpt, "-o", tmp_path / "new"))


# ---- the Python API: a loaded model computes no function that no task has ---------------------------


def test_a_loaded_model_refuses_to_run_until_a_task_mode_is_set(digits_ckpt):
    from wsncli.engine.usecases.outputs import set_task_mode

    ckpt = load_checkpoint(digits_ckpt)
    x = torch.zeros(2, 64)
    with pytest.raises(TaskError, match="set_task_mode"):
        ckpt.model(x, 1)
    set_task_mode(ckpt.model, ckpt.masks[1])
    assert ckpt.model(x, 1).shape == (2, 2)


# ---- options and messages -------------------------------------------------------------------------


def test_predict_on_images_of_another_size_does_not_advise_an_option_predict_lacks(image_ckpt, tmp_path):
    _png(tmp_path / "x.png", np.zeros((10, 10), np.uint8))
    line = assert_error(wsn("predict", tmp_path / "x.png", "-c", image_ckpt.ckpt, "-t", 1), 1, "10x10", "8x8")
    assert "--image-size" not in line


def test_empty_hidden_sizes_are_refused(tmp_path):
    assert_error(wsn("train-task", "-c", tmp_path / "m.pt", "-t", 1, "--hidden", ""), 2, "--hidden must be sizes")


def test_predict_output_gets_the_npy_suffix(digits_ckpt, tmp_path):
    from wsncli.engine.data.registry import load_task

    np.save(tmp_path / "x.npy", load_task("split-digits", 1).raw_test[:5])
    result = wsn("predict", tmp_path / "x.npy", "-c", digits_ckpt, "-t", 1, "-o", tmp_path / "pred")
    assert_ok(result)
    assert not (tmp_path / "pred").exists() and np.load(tmp_path / "pred.npy").shape == (5,)
    assert "pred.npy" in result.stdout


def test_inspect_shows_each_tasks_classes(digits_ckpt):
    doc = json_out(wsn("inspect", digits_ckpt, "--json"))
    assert [t["classes"] for t in doc["tasks"]] == [[2, 3], [0, 1], [4, 5]]
    table = wsn("inspect", digits_ckpt)
    assert_ok(table)
    assert "classes" in table.stdout and "2, 3" in table.stdout


def test_packed_size_against_packbits_reads_as_smaller_or_larger():
    from wsncli.commands.pack_masks import versus_packbits

    assert versus_packbits(0.25) == "25.0% smaller than packbits"
    assert versus_packbits(-0.194) == "19.4% larger than packbits"
    assert versus_packbits(0.0) == "as large as packbits"


def test_eval_summary_when_no_task_can_be_proven_by_its_outputs():
    from wsncli.commands.evaluate import _summary

    report = SimpleNamespace(
        bwt=None,
        bwt_tasks=[],
        tasks=[SimpleNamespace(task=t, status="data-changed") for t in (1, 2)],
        with_status=lambda s: [1, 2] if s == "data-changed" else [],
        forget_free=True,
        capacity_used=None,
        acc=0.5,
    )
    line = _summary(report)
    assert "none" not in line and "not proven by outputs; task(s) 1, 2: subnetwork unchanged" in line


def test_progress_text_has_the_epoch_total_and_the_running_loss():
    from wsncli.commands.train_task import LiveTraining

    live = LiveTraining()
    assert live.text() == ""
    live.epoch = 2
    live.start_epoch(20, lambda: math.nan)
    assert live.text() == "epoch 2/20 loss -"
    live.start_epoch(20, lambda: 0.42131)
    assert live.text() == "epoch 2/20 loss 0.4213"


def test_the_running_loss_reader_gives_the_epochs_mean_loss_so_far():
    from tests.conftest import image_task
    from wsncli.engine.nn.models import ModelConfig, build_model
    from wsncli.engine.training.loop import TrainCallbacks, TrainSettings, train_task

    torch.manual_seed(0)
    model = build_model(ModelConfig("mlp", (1, 6, 6), (8,)))
    model.add_task(1, 2)
    seen, readers = [], []
    callbacks = TrainCallbacks(
        on_batch_end=lambda b: seen.append(readers[-1]()),
        on_running_loss=lambda epochs, read: readers.append(read) or seen.append((epochs, read())),
    )
    result = train_task(model, image_task(1, shape=(1, 6, 6)), TrainSettings(1, 0.5, 2, 8, 1e-2, 0), None,
                        torch.device("cpu"), callbacks)  # fmt: skip
    assert seen[0][0] == 2 and math.isnan(seen[0][1])  # before the first batch: no loss yet
    assert 0.4 < seen[1] < 1.5  # after one batch of 8 (of 32): that batch's mean cross-entropy, near ln 2
    per_epoch = len(seen) // 2
    assert seen[per_epoch - 1] == pytest.approx(result.history[0].train_loss, rel=1e-5)  # the epoch's mean


def test_a_resumed_task_counts_the_training_time_before_the_stop():
    from dataclasses import replace

    from tests.conftest import image_task
    from wsncli.engine.nn.models import ModelConfig, build_model
    from wsncli.engine.training.loop import TrainCallbacks, TrainSettings, train_task

    data, settings = image_task(1, shape=(1, 6, 6)), TrainSettings(1, 0.5, 2, 8, 1e-2, 0)
    states = []
    torch.manual_seed(0)
    model = build_model(ModelConfig("mlp", (1, 6, 6), (8,)))
    model.add_task(1, 2)
    train_task(model, data, settings, None, torch.device("cpu"), TrainCallbacks(on_state=states.append))
    assert states[0].seconds > 0  # the snapshot after epoch 1 carries the time so far
    torch.manual_seed(0)
    again = build_model(ModelConfig("mlp", (1, 6, 6), (8,)))
    again.add_task(1, 2)
    resumed = train_task(again, data, settings, None, torch.device("cpu"), resume=replace(states[0], seconds=1000.0))
    assert resumed.seconds >= 1000.0
