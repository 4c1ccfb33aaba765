"""The WSN invariants for every architecture in ARCHS, on tiny inputs: an all-ones mask is the dense
net, exact per-layer density, a later task leaves earlier tasks bit-identical, every trunk weight is
masked under a stable name, feature sizes, and exact refusals of inputs a net cannot take."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import image_task, torch_threads
from wsncli.engine.nn.models import ARCHS, ModelConfig, ResNet18, build_model, count_parameters
from wsncli.engine.nn.subnet import SubnetConv2d, SubnetLayer
from wsncli.engine.training.loop import TrainSettings, train_task
from wsncli.engine.usecases.outputs import set_task_mode
from wsncli.errors import DataError, UsageError

ROOT = Path(__file__).resolve().parents[2]

# the smallest convenient input per arch (resnet18 with nf = 4); every arch in ARCHS must be here
SMALL = {
    "mlp": ModelConfig("mlp", (1, 6, 6), (12, 10)),
    "conv": ModelConfig("conv", (1, 19, 19)),
    "resnet18": ModelConfig("resnet18", (2, 9, 9), width=4),
    "lenet": ModelConfig("lenet", (1, 16, 16)),
    "conv4": ModelConfig("conv4", (3, 8, 8)),
}
IMAGE_ARCHS = {"conv": 19, "resnet18": 9, "lenet": 16, "conv4": 1}  # arch -> smallest image side


def _resnet_names() -> list[str]:
    names = ["conv1"]
    for stage in (1, 2, 3, 4):
        for block in (0, 1):
            names += [f"layer{stage}.{block}.conv1", f"layer{stage}.{block}.conv2"]
            if stage > 1 and block == 0:
                names.append(f"layer{stage}.0.shortcut")
    return names


NAMES = {
    "mlp": ["layers.0", "layers.1"],
    "conv": ["convs.0", "convs.1", "convs.2", "fcs.0", "fcs.1"],
    "resnet18": _resnet_names(),
    "lenet": ["convs.0", "convs.1", "fcs.0"],
    "conv4": ["convs.0", "convs.1", "convs.2", "convs.3", "fcs.0", "fcs.1"],
}


def _model(config: ModelConfig, tasks=(1,)):
    """A net with tasks' heads, their BatchNorms (if any) given non-trivial running statistics, in eval mode."""
    torch.manual_seed(0)
    model = build_model(config)
    for t in tasks:
        model.add_task(t, 3)
    model.train()
    with torch.no_grad():
        for t in tasks:
            model(torch.randn(16, *config.input_shape) * t + t, t)
    model.eval()
    return model


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_arch_is_tested():
    assert set(SMALL) == set(ARCHS) == set(NAMES)
    assert set(IMAGE_ARCHS) == set(ARCHS) - {"mlp"}


@pytest.mark.parametrize("arch", ARCHS)
def test_all_ones_mask_gives_exactly_the_dense_network(arch):
    config = SMALL[arch]
    model = _model(config)
    x = torch.randn(5, *config.input_shape)
    ones = {n: torch.ones_like(l.weight, dtype=torch.bool) for n, l in model.subnet_layers().items()}
    with torch.no_grad():
        model.dense()
        dense = model(x, 1)
        model.use_masks(ones)
        masked = model(x, 1)
    assert dense.shape == (5, 3)
    assert torch.equal(masked, dense)


@pytest.mark.parametrize("capacity", [0.05, 0.123, 0.5])
@pytest.mark.parametrize("arch", ARCHS)
def test_train_subnet_keeps_exactly_round_c_n_weights_in_every_layer(arch, capacity):
    config = SMALL[arch]
    model = _model(config)
    torch.manual_seed(2)
    frozen = {n: torch.rand(l.weight.shape) < 0.3 for n, l in model.subnet_layers().items()}
    model.train_subnet(capacity, frozen)
    model.train()
    model(torch.randn(4, *config.input_shape), 1)  # a training forward selects each layer's mask
    for name, layer in model.subnet_layers().items():
        k = round(capacity * layer.weight.numel())
        assert int(layer._last_mask.sum()) == k, name
        assert int(layer.current_mask().sum()) == k, name


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_a_later_task_leaves_earlier_tasks_bit_identical(arch, bias):
    """With the exact BatchNorm statistics and (bias=True) per-task biases too."""
    config = replace(SMALL[arch], bias=bias)
    with torch_threads(1):
        torch.manual_seed(0)
        model = build_model(config)
        data = {t: image_task(t, shape=config.input_shape) for t in (1, 2)}
        model.add_task(1, 2)
        first = train_task(model, data[1], TrainSettings(1, 0.3, 2, 16, 1e-2, 0), None, torch.device("cpu"))
        weights = {n: l.weight.detach().clone() for n, l in model.subnet_layers().items()}
        head1 = _state(model.heads["1"])
        norms1 = _state(model.task_norms["1"]) if "1" in model.task_norms else {}
        biases1 = _state(model.task_biases["1"]) if bias else {}
        assert not bias or any(v.any() for v in biases1.values()), "task 1's biases never trained"
        x_test = torch.from_numpy(data[1].x_test)
        set_task_mode(model, first.masks)
        with torch.no_grad():
            logits1 = model(x_test, 1)

        model.add_task(2, 2)
        norms2_fresh = _state(model.task_norms["2"]) if "2" in model.task_norms else {}
        biases2_fresh = _state(model.task_biases["2"]) if bias else {}
        train_task(model, data[2], TrainSettings(2, 0.3, 2, 16, 1e-2, 0), first.masks, torch.device("cpu"))

        moved = False
        for name, layer in model.subnet_layers().items():
            used, now = first.masks[name], layer.weight.detach()
            assert used.any(), name
            assert torch.equal(now[used], weights[name][used]), f"{name}: a weight of task 1 moved"
            moved |= not torch.equal(now[~used], weights[name][~used])
        assert moved, "no free weight trained: the test would be vacuous"
        assert _same(_state(model.heads["1"]), head1)
        assert _same(_state(model.task_norms["1"]) if "1" in model.task_norms else {}, norms1)
        assert _same(_state(model.task_biases["1"]) if bias else {}, biases1)
        if bias:  # task 2 trained its own biases
            assert not _same(_state(model.task_biases["2"]), biases2_fresh)
        if norms2_fresh:  # task 2's own statistics did move
            assert not _same(_state(model.task_norms["2"]), norms2_fresh)
        set_task_mode(model, first.masks)
        with torch.no_grad():
            assert torch.equal(model(x_test, 1), logits1), "task 1's outputs changed"


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_names_are_stable_unique_in_forward_order_and_cover_every_trunk_weight(arch):
    config = SMALL[arch]
    model = _model(config, tasks=(1, 2))
    layers = model.subnet_layers()
    assert list(layers) == NAMES[arch]
    assert list(build_model(config).subnet_layers()) == NAMES[arch]  # the same for a fresh build
    assert (
        len({id(l) for l in layers.values()}) == len(layers) == sum(isinstance(m, SubnetLayer) for m in model.modules())
    )
    called = []
    hooks = [l.register_forward_hook(lambda *_a, name=name: called.append(name)) for name, l in layers.items()]
    with torch.no_grad():
        model(torch.randn(2, *config.input_shape), 1)
    for hook in hooks:
        hook.remove()
    assert called == NAMES[arch]
    # every trunk parameter is a masked layer's weight or score; BatchNorm has none
    masked = {f"{n}.{kind}" for n in layers for kind in ("weight", "scores")}
    trunk = {n for n, _ in model.named_parameters() if not n.startswith("heads.")}
    assert trunk == masked
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert name.startswith("heads."), f"{name} is an unmasked {type(module).__name__}"


def test_resnet18_shortcuts_are_masked_1x1_strided_convs_each_with_its_own_norm():
    model = _model(SMALL["resnet18"], tasks=(1,))
    layers = model.subnet_layers()
    shortcuts = {n: l for n, l in layers.items() if n.endswith("shortcut")}
    assert list(shortcuts) == ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]
    for layer in shortcuts.values():
        assert isinstance(layer, SubnetConv2d) and layer.weight.shape[2:] == (1, 1) and layer.stride == 2
    norms = model.task_norms["1"]
    assert len(norms) == len(layers)  # one BatchNorm per masked conv, in subnet_layers() order
    for norm, layer in zip(norms, layers.values()):
        assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == layer.weight.shape[0]
        assert not norm.affine and norm.track_running_stats


@pytest.mark.parametrize("arch", ["conv", "resnet18"])
def test_a_task_output_depends_only_on_its_own_batchnorm(arch):
    config = SMALL[arch]
    model = _model(config, tasks=(1, 2))
    x = torch.randn(3, *config.input_shape)
    with torch.no_grad():
        before = model(x, 1)
        model.train()
        model(torch.randn(16, *config.input_shape) * 5 + 3, 2)  # task 2's statistics move
        model.eval()
        assert torch.equal(model(x, 1), before)


@pytest.mark.parametrize("arch", ["mlp", "lenet", "conv4"])
def test_nets_without_batchnorm_have_no_task_norms(arch):
    model = _model(SMALL[arch], tasks=(1, 2))
    assert not model.task_norms and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("side", [32, 64, 84])
def test_resnet18_features_are_640_for_nf_20_at_32_64_and_84(side):
    config = ModelConfig("resnet18", (3, side, side))
    with torch.device("meta"):
        model = build_model(config)
        model.add_task(1, 5)
        model.eval()
        out = model.trunk(torch.empty(2, *config.input_shape), 1)  # (2, 640)
    assert model.feature_dim == 640 == count_parameters(config)["feature_dim"]
    assert out.shape == (2, 640) and out.is_meta
    assert model.conv1.stride == (1 if side <= 32 else 2)
    assert count_parameters(ModelConfig("resnet18", (1, side, side), width=4))["feature_dim"] == 128


@pytest.mark.parametrize("arch", sorted(IMAGE_ARCHS))
def test_refuses_inputs_it_cannot_take_with_the_smallest_side_it_takes(arch):
    side = IMAGE_ARCHS[arch]
    assert type(build_model(SMALL[arch])).min_side() == side
    width = SMALL[arch].width
    for shape in [(1, side, side), (3, side, side + 7)]:
        assert count_parameters(ModelConfig(arch, shape, width=width))["feature_dim"] > 0  # the minimum runs
    for bad in [(1, side - 1, side - 1), (3, side, side - 1), (3, side - 1, 40)]:
        with pytest.raises(DataError) as err:  # exit 1: the shape comes from the data
            build_model(ModelConfig(arch, bad, width=width))
        assert str(err.value).startswith(
            f"arch {arch} needs images of at least {side}x{side}, got {bad}; --image-size {side}"
        )
    for bad in [(64,), (8, 8), (1, 1, 32, 32)]:
        with pytest.raises(DataError) as err:
            build_model(ModelConfig(arch, bad, width=width))
        assert str(err.value) == f"arch {arch} needs image inputs (C, H, W), got shape {bad}"


def test_width_is_resnet18_only_and_in_range():
    assert ResNet18(ModelConfig("resnet18", (3, 9, 9))).width == 20  # None: the default nf
    for bad in (0, 1025):
        with pytest.raises(UsageError) as err:
            build_model(ModelConfig("resnet18", (3, 9, 9), width=bad))
        assert str(err.value) == f"--width must be 1..1024 for arch resnet18, got {bad}"
    with pytest.raises(UsageError) as err:
        build_model(ModelConfig("conv4", (3, 8, 8), width=20))
    assert str(err.value) == "--width applies to arch resnet18 only, not conv4"


@pytest.mark.parametrize("arch", ARCHS)
def test_count_parameters_matches_the_real_network(arch):
    config = SMALL[arch]
    model = _model(config)
    counted = count_parameters(config)
    layers = model.subnet_layers()
    assert list(counted["layers"]) == list(layers)
    for name, layer in layers.items():
        assert counted["layers"][name]["weights"] == layer.weight.numel() == layer.scores.numel()
        assert counted["layers"][name]["weight_shape"] == list(layer.weight.shape)
    assert counted["masked_weights"] == sum(l.weight.numel() for l in layers.values())
    assert counted["feature_dim"] == model.feature_dim == model.trunk(torch.randn(1, *config.input_shape), 1).shape[1]
    norms = model.task_norms["1"] if "1" in model.task_norms else []
    assert counted["norm_features"] == sum(n.num_features for n in norms)


def _resnet18_weights(c: int, nf: int) -> int:
    """By hand: stem, then per stage two 3x3 convs per block and a 1x1 shortcut where the width changes."""
    total, cin = 9 * c * nf, nf
    for stage in range(4):
        cout = nf * 2**stage
        total += 9 * cin * cout + 9 * cout * cout + 9 * cout * cout * 2 + (cin * cout if cin != cout else 0)
        cin = cout
    return total


# the configurations docs/ARCHITECTURES.md documents, with their totals worked out by hand
DOCUMENTED = [
    (ModelConfig("resnet18", (3, 32, 32)), _resnet18_weights(3, 20)),
    (ModelConfig("resnet18", (3, 64, 64)), _resnet18_weights(3, 20)),
    (ModelConfig("lenet", (1, 28, 28)), 20 * 25 + 50 * 20 * 25 + 500 * 50 * 4 * 4),
    (ModelConfig("lenet", (3, 32, 32)), 20 * 3 * 25 + 50 * 20 * 25 + 500 * 50 * 5 * 5),
    (ModelConfig("conv4", (3, 64, 64)), 160 * 3 * 9 + 3 * 160 * 160 * 9 + 2560 * 640 + 640 * 640),
]


def test_documented_bias_storage_per_task():
    """docs/ARCHITECTURES.md: one float32 per output channel of every masked layer per task."""
    doc = (ROOT / "docs" / "ARCHITECTURES.md").read_text()
    for config, values in (
        (ModelConfig("mlp", (784,)), 200),
        (ModelConfig("conv", (3, 32, 32)), 4544),
        (ModelConfig("resnet18", (3, 32, 32)), 1500),
        (ModelConfig("lenet", (1, 28, 28)), 570),
        (ModelConfig("conv4", (3, 64, 64)), 1920),
    ):
        assert count_parameters(config)["bias_features"] == values
        model = build_model(replace(config, bias=True))
        model.add_task(1, 2)
        assert sum(b.numel() for b in model.task_biases["1"]) == values
        assert f"{values * 4:,} bytes" in doc or f"{values * 4} bytes" in doc


@pytest.mark.parametrize("config,total", DOCUMENTED, ids=lambda v: getattr(v, "arch", ""))
def test_documented_parameter_counts(config, total):
    counted = count_parameters(config)
    assert counted["masked_weights"] == total
    doc = (ROOT / "docs" / "ARCHITECTURES.md").read_text()
    shape = "x".join(map(str, config.input_shape))
    assert f"| {config.arch} | {shape} | {total:,} |" in doc
