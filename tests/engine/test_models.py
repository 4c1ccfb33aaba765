"""Networks: an all-ones mask is the dense network, per-task heads and BatchNorm, shapes, configs."""

from __future__ import annotations

import msgspec
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import CONV_SHAPE
from wsncli.engine.nn.models import ConvNet, MLPNet, ModelConfig, build_model, parse_hidden
from wsncli.engine.nn.subnet import k_for_capacity
from wsncli.engine.store.schema import ModelSpec, from_model_config, to_model_config
from wsncli.errors import DataError, UsageError

MLP = ModelConfig("mlp", (64,), (30, 20))
CONV = ModelConfig("conv", CONV_SHAPE)


def _model(config: ModelConfig, tasks=(1,)):
    torch.manual_seed(0)
    model = build_model(config)
    for t in tasks:
        model.add_task(t, 3)
    if isinstance(model, ConvNet):  # give the BatchNorms non-trivial running statistics
        model.train()
        with torch.no_grad():
            for t in tasks:
                model(torch.randn(16, *config.input_shape), t)
    model.eval()
    return model


def _all_ones(model):
    return {n: torch.ones_like(l.weight, dtype=torch.bool) for n, l in model.subnet_layers().items()}


@pytest.mark.parametrize("config", [MLP, CONV], ids=["mlp", "conv"])
def test_all_ones_mask_gives_the_dense_network(config):
    model = _model(config)
    x = torch.randn(5, *config.input_shape)
    with torch.no_grad():
        model.dense()
        dense = model(x, 1)
        model.use_masks(_all_ones(model))
        masked = model(x, 1)
        model.train_subnet(1.0, None)  # capacity 1: top-k keeps every weight
        subnet = model(x, 1)
    assert dense.shape == (5, 3)
    assert torch.equal(masked, dense)
    assert torch.equal(subnet, dense)


@pytest.mark.parametrize("config", [MLP, CONV], ids=["mlp", "conv"])
def test_a_mask_zeroes_exactly_the_unselected_weights(config):
    model = _model(config)
    x = torch.randn(4, *config.input_shape)
    torch.manual_seed(1)
    masks = {n: torch.rand(l.weight.shape) < 0.4 for n, l in model.subnet_layers().items()}
    with torch.no_grad():
        model.use_masks(masks)
        masked = model(x, 1)
        model.dense()
        for n, l in model.subnet_layers().items():
            l.weight.mul_(masks[n])  # the dense net with the unselected weights set to zero
        zeroed = model(x, 1)
    assert torch.allclose(masked, zeroed, rtol=0, atol=1e-6)


def test_train_subnet_keeps_round_c_n_in_every_layer():
    model = _model(CONV)
    model.train_subnet(0.123, None)
    for name, layer in model.subnet_layers().items():
        n = layer.weight.numel()
        assert layer.k == round(0.123 * n) == k_for_capacity(n, 0.123), name
        assert int(layer.current_mask().sum()) == round(0.123 * n), name


def test_layer_names_and_shapes():
    mlp = build_model(MLP)
    assert {n: tuple(l.weight.shape) for n, l in mlp.subnet_layers().items()} == {
        "layers.0": (30, 64),
        "layers.1": (20, 30),
    }
    conv = build_model(CONV)
    assert list(conv.subnet_layers()) == ["convs.0", "convs.1", "convs.2", "fcs.0", "fcs.1"]
    assert tuple(conv.subnet_layers()["convs.0"].weight.shape) == (64, 1, 4, 4)
    assert tuple(conv.subnet_layers()["fcs.0"].weight.shape) == (2048, 256 * 1 * 1)  # 20 -> 8 -> 3 -> 1


def test_heads_and_norms_are_per_task_and_adding_one_leaves_the_others():
    model = _model(CONV, tasks=(1,))
    head1 = {k: v.clone() for k, v in model.heads["1"].state_dict().items()}
    norm1 = {k: v.clone() for k, v in model.task_norms["1"].state_dict().items()}
    model.add_task(2, 5)
    assert model.heads["2"].out_features == 5 and model.heads["1"].out_features == 3
    assert all(torch.equal(v, model.heads["1"].state_dict()[k]) for k, v in head1.items())
    assert all(torch.equal(v, model.task_norms["1"].state_dict()[k]) for k, v in norm1.items())
    # BatchNorm has no affine parameters: nothing in it is trained, only per-task statistics
    assert not list(model.task_norms["2"].parameters())
    assert isinstance(build_model(MLP), MLPNet) and not build_model(MLP).task_norms


def test_conv_task_output_depends_only_on_its_own_batchnorm():
    model = _model(CONV, tasks=(1, 2))
    x = torch.randn(3, *CONV_SHAPE)
    with torch.no_grad():
        before = model(x, 1)
        model.train()
        model(torch.randn(16, *CONV_SHAPE) * 5 + 3, 2)  # task 2's statistics move
        model.eval()
        after = model(x, 1)
    assert torch.equal(before, after)


def test_config_round_trip_and_validation():
    assert to_model_config(from_model_config(MLP)) == MLP
    assert to_model_config(from_model_config(CONV)) == CONV
    assert parse_hidden("100-100") == (100, 100) == parse_hidden("100,100")
    for bad in ("", "a-b", "0-5", "100-70000", "-100", "100-100-", "100--100"):
        with pytest.raises(UsageError, match="--hidden"):
            parse_hidden(bad)
    with pytest.raises(UsageError, match="unknown architecture 'resnet'"):
        build_model(ModelConfig("resnet", (64,)))
    with pytest.raises(DataError, match=r"image inputs \(C, H, W\)"):
        build_model(ModelConfig("conv", (64,)))


def test_width_is_stored_only_when_set_and_old_configs_load():
    old = b'{"arch":"conv","input_shape":[1,20,20],"hidden":[100,100]}'  # written before widths
    assert to_model_config(msgspec.json.decode(old, type=ModelSpec)) == CONV and CONV.width is None
    assert msgspec.json.encode(from_model_config(CONV)) == old  # no "width" key: unchanged checkpoint meta
    wide = ModelConfig("resnet18", (3, 32, 32), width=8)
    assert msgspec.to_builtins(from_model_config(wide)) == {
        "arch": "resnet18",
        "input_shape": [3, 32, 32],
        "hidden": [100, 100],
        "width": 8,
    }
    assert to_model_config(from_model_config(wide)) == wide


def test_conv_minimum_image_size_is_what_the_message_says():
    side = ConvNet.min_side()
    build_model(ModelConfig("conv", (1, side, side)))  # fits
    with pytest.raises(DataError, match=f"at least {side}x{side}.*--image-size {side}"):
        build_model(ModelConfig("conv", (1, side - 1, side - 1)))


def test_mlp_forward_matches_a_hand_written_one():
    model = _model(MLP)
    x = torch.randn(4, 64)
    l0, l1 = model.layers
    with torch.no_grad():
        model.dense()
        expected = model.heads["1"](F.relu(F.relu(x @ l0.weight.T) @ l1.weight.T))
        assert torch.allclose(model(x, 1), expected, rtol=0, atol=1e-6)


def test_each_size_limit_has_one_home_that_the_request_and_the_schema_share():
    from pathlib import Path

    from tests.cli.helpers import wsn
    from wsncli.engine.limits import MAX_HIDDEN, MAX_IMAGE_SIZE, MAX_WIDTH
    from wsncli.engine.usecases.request import TaskRequest, check_request

    for field, most in (("width", MAX_WIDTH), ("image_size", MAX_IMAGE_SIZE), ("hidden", MAX_HIDDEN)):
        value = (most,) if field == "hidden" else most
        over = (most + 1,) if field == "hidden" else most + 1
        check_request(TaskRequest(ckpt=Path("x.wsn"), task=1, **{field: value}))
        with pytest.raises(UsageError, match=f"^{field} "):
            check_request(TaskRequest(ckpt=Path("x.wsn"), task=1, **{field: over}))
    spec = {"arch": "resnet18", "input_shape": [3, 32, 32]}
    msgspec.convert({**spec, "width": MAX_WIDTH, "hidden": [MAX_HIDDEN]}, ModelSpec)
    for bad in ({"width": MAX_WIDTH + 1}, {"hidden": [MAX_HIDDEN + 1]}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({**spec, **bad}, ModelSpec)
    for flag, most in (("--width", MAX_WIDTH), ("--image-size", MAX_IMAGE_SIZE)):
        assert wsn("train-task", "-t", 1, "-c", "never.wsn", flag, most + 1).exit_code == 2
