"""`--arch-module PKG.MODULE:FACTORY`: a user's trunk trained, proven, predicted with and exported
through the CLI; every later command needs it again and refuses another network in one line."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from tests.cli.helpers import assert_error, json_out, wsn

TRUNKS = '''
from torch import nn

def cnn(input_shape):
    """split-digits rows (64,) as 8x8 images: convs, BatchNorm, a strided conv, a Linear."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
    )

def cnn_wider(input_shape):
    """cnn with a wider Linear: the same layer names and kinds, another shape."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 20), nn.ReLU(),
    )

def cnn_dilated(input_shape):
    """cnn with a dilated first conv: the same names, kinds and shapes, another function."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=2, dilation=2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
    )

def wider(input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 24), nn.ReLU())

def layernorm(input_shape):
    return nn.Sequential(nn.Linear(input_shape[0], 8), nn.LayerNorm(8))

def not_a_module(input_shape):
    return 42
'''
MOD = "wsn_test_trunks"


@pytest.fixture
def trunks(tmp_path, monkeypatch):
    (tmp_path / f"{MOD}.py").write_text(TRUNKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(MOD, None)


def _train(ckpt, task, module=f"{MOD}:cnn", *extra):
    return wsn("train-task", "-t", task, "-c", ckpt, "--arch-module", module, "--epochs", 1, "-q", "--json", *extra)


def test_a_user_trunk_trains_proves_predicts_and_exports(trunks):
    ckpt = trunks / "run.wsn"
    assert json_out(_train(ckpt, 1))["task"]["task"] == 1
    assert json_out(_train(ckpt, 2))["task"]["task"] == 2
    doc = json_out(wsn("eval", "-c", ckpt, "--arch-module", f"{MOD}:cnn", "--json", "-q"))
    assert doc["forget_free"] is True and {t["status"] for t in doc["tasks"]} == {"proven"}, doc
    x = np.random.default_rng(0).integers(0, 17, (5, 64)).astype(np.uint8)
    np.save(trunks / "x.npy", x)
    pred = json_out(wsn("predict", trunks / "x.npy", "-c", ckpt, "-t", 2, "--arch-module", f"{MOD}:cnn", "--json"))
    out = trunks / "t2.pt2"
    json_out(wsn("export", "-c", ckpt, "-t", 2, "-o", out, "--arch-module", f"{MOD}:cnn", "--json"))
    program = torch.export.load(str(out)).module()
    ckpt_obj = __import__("wsncli").open_checkpoint(ckpt, arch=__import__(MOD).cnn)
    labels = ckpt_obj.task_record(2).classes
    got = program(torch.from_numpy(x)).argmax(1).tolist()
    assert [labels[i] for i in got] == pred["predictions"]


def test_later_commands_need_the_same_network(trunks):
    ckpt = trunks / "run.wsn"
    json_out(_train(ckpt, 1))
    assert_error(wsn("eval", "-c", ckpt), 2, "--arch-module wsn_test_trunks:cnn", "never makes wsn import")
    for other in ("wider", "cnn_wider", "cnn_dilated"):
        assert_error(wsn("eval", "-c", ckpt, "--arch-module", f"{MOD}:{other}"), 2, "different network")
    assert_error(_train(ckpt, 2, f"{MOD}:wider"), 2, "different network")
    assert_error(wsn("train-task", "-t", 2, "-c", ckpt, "--epochs", 1), 2, "pass --arch-module again")


def test_arch_module_refusals_are_one_line(trunks):
    ckpt = trunks / "a.wsn"
    assert_error(_train(ckpt, 1, "no_such_module_xyz:f"), 2, "cannot import no_such_module_xyz")
    assert_error(_train(ckpt, 1, f"{MOD}:missing"), 2, "has no callable 'missing'")
    assert_error(_train(ckpt, 1, "not a name"), 2, "PKG.MODULE:FACTORY")
    assert_error(_train(ckpt, 1, f"{MOD}:not_a_module"), 2, "not a module")
    assert_error(_train(ckpt, 1, f"{MOD}:layernorm"), 2, "'1'", "neither mask nor keep per task")
    assert_error(_train(ckpt, 1, f"{MOD}:cnn", "--arch", "mlp"), 2, "takes no --arch")
    assert not ckpt.exists()
    builtin = trunks / "b.wsn"
    json_out(wsn("train-task", "-t", 1, "-c", builtin, "--epochs", 1, "-q", "--json"))
    assert_error(wsn("eval", "-c", builtin, "--arch-module", f"{MOD}:cnn"), 2, "built-in 'mlp'")
