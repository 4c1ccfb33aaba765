"""Training invariants: frozen weights bit-identical, old heads and BatchNorm untouched, fresh
optimizer per task, scores initialised once, best epoch restored, CPU runs reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import image_task, torch_threads
from wsncli.engine.nn.models import ModelConfig, build_model
from wsncli.engine.store.checkpoint import checkpoint_arrays, load_checkpoint
from wsncli.engine.training.loop import TrainCallbacks, TrainSettings, train_task
from wsncli.engine.usecases import learn as learner_mod
from wsncli.engine.usecases.learn import TaskRequest, learn_task
from wsncli.errors import WsnError

CPU = torch.device("cpu")


def _union(masks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {n: torch.stack([m[n] for m in masks]).any(0) for n in masks[0]}


# ---- frozen weights, heads, BatchNorm (the paper's conv net, engine level) ---------------------------


def test_conv_weights_under_earlier_masks_are_bit_identical_after_later_tasks(conv_run):
    final = conv_run.states[3]
    for t in (1, 2):
        used = _union([conv_run.masks[j] for j in range(1, t + 1)])  # M_t
        for name, m in used.items():
            w_then, w_now = conv_run.states[t][f"{name}.weight"], final[f"{name}.weight"]
            assert m.any(), name
            assert torch.equal(w_now[m], w_then[m]), f"{name}: a weight of M_{t} moved"
    # the free weights did train: the test is not vacuous
    free = {n: ~m for n, m in _union([conv_run.masks[1], conv_run.masks[2]]).items()}
    assert any(not torch.equal(final[f"{n}.weight"][f], conv_run.states[2][f"{n}.weight"][f]) for n, f in free.items())


def test_conv_old_heads_and_batchnorm_statistics_are_unchanged(conv_run):
    final = conv_run.states[3]
    for t in (1, 2):
        keys = [k for k in conv_run.states[t] if k.startswith((f"heads.{t}.", f"task_norms.{t}."))]
        assert any(k.endswith("running_mean") for k in keys) and any(k.startswith("heads.") for k in keys)
        for k in keys:
            assert torch.equal(final[k], conv_run.states[t][k]), k
    # and task 3's own statistics did move away from their initial values
    assert not torch.equal(final["task_norms.3.0.running_mean"], torch.zeros_like(final["task_norms.3.0.running_mean"]))


def test_conv_task_outputs_are_bit_identical_after_later_tasks(conv_run):
    from wsncli.engine.usecases.outputs import set_task_mode

    model = conv_run.model
    with torch_threads(conv_run.threads):  # the thread count used at learning
        for t in (1, 2, 3):
            set_task_mode(model, conv_run.masks[t])
            with torch.no_grad():
                logits = model(torch.from_numpy(conv_run.data[t].x_test), t)
            assert torch.equal(logits, conv_run.logits[t]), f"task {t} outputs changed"


def test_conv_masks_keep_round_c_n_and_later_tasks_reuse_earlier_weights(conv_run):
    layers = conv_run.model.subnet_layers()
    for t, masks in conv_run.masks.items():
        for name, m in masks.items():
            assert int(m.sum()) == round(0.1 * layers[name].weight.numel()), (t, name)
    reused = sum(int((conv_run.masks[2][n] & conv_run.masks[1][n]).sum()) for n in layers)
    assert reused > 0


# ---- frozen weights through real checkpoints (split-digits, CLI engine path) -------------------------


def test_checkpoint_weights_under_m_t_are_bit_identical_after_later_tasks(digits_run):
    final = load_checkpoint(digits_run.path)
    assert final.learned() == list(digits_run.order)
    for t in digits_run.order[:-1]:
        then = load_checkpoint(digits_run.after[t])
        used = then.used_weights()  # M after task t
        for name, layer in final.model.subnet_layers().items():
            w_then = then.model.subnet_layers()[name].weight.detach()
            assert torch.equal(layer.weight.detach()[used[name]], w_then[used[name]]), (t, name)
        for learned in then.learned():
            assert torch.equal(final.masks[learned]["layers.0"], then.masks[learned]["layers.0"])
            for k, v in then.model.heads[str(learned)].state_dict().items():
                assert torch.equal(final.model.heads[str(learned)].state_dict()[k], v)


def test_checkpoint_masks_keep_exactly_round_c_n_per_layer(digits_run):
    ckpt = load_checkpoint(digits_run.path)
    for t in digits_run.order:
        c = digits_run.capacity[t]
        for name, layer in ckpt.model.subnet_layers().items():
            n = layer.weight.numel()
            assert int(ckpt.masks[t][name].sum()) == round(c * n), (t, name)
            assert ckpt.task_record(t).kept_per_layer[name] == round(c * n)


# ---- optimizer and scores ------------------------------------------------------------------------


def test_each_task_gets_a_fresh_adam_without_weight_decay(tmp_path, monkeypatch):
    from wsncli.engine.training import loop
    from wsncli.engine.training.optim import MaskedAdam

    made = []

    def recording(*args, **kwargs):
        opt = loop_make_optimizer(*args, **kwargs)
        # at creation: every moment zero and no step taken (nothing carried from an earlier task)
        fresh = all(
            float(s["step"]) == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any() for s in opt.state.values()
        )
        made.append((opt, fresh))
        return opt

    loop_make_optimizer = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", recording)
    path = tmp_path / "m.pt"
    for task in (1, 2):
        learn_task(TaskRequest(ckpt=path, task=task, epochs=1, device="cpu"))
    assert len(made) == 2 and made[0][0] is not made[1][0]
    for opt, fresh in made:
        assert isinstance(opt, MaskedAdam) and fresh
        assert all(g["weight_decay"] == 0 and g["lr"] == 1e-3 for g in opt.param_groups)


def testtrainable_parameters_are_the_trunk_and_only_the_current_head(conv_run):
    from wsncli.engine.training.loop import trainable_parameters

    params = {id(p) for p in trainable_parameters(conv_run.model, 2, "wsn")}
    assert all(id(p) in params for p in conv_run.model.heads["2"].parameters())
    assert not any(id(p) in params for p in conv_run.model.heads["1"].parameters())
    assert all(id(l.scores) in params and id(l.weight) in params for l in conv_run.model.subnet_layers().values())
    dense = {id(p) for p in trainable_parameters(conv_run.model, 2, "finetune")}
    assert not any(id(l.scores) in dense for l in conv_run.model.subnet_layers().values())


def test_scores_are_initialised_once_and_carried_into_later_tasks(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    learn_task(TaskRequest(ckpt=path, task=1, epochs=1, device="cpu"))
    saved = {n: l.scores.detach().clone() for n, l in load_checkpoint(path).model.subnet_layers().items()}
    seen = {}
    real_train_task = learner_mod.train_task

    def spy(model, *args, **kwargs):
        seen.update({n: l.scores.detach().clone() for n, l in model.subnet_layers().items()})
        return real_train_task(model, *args, **kwargs)

    monkeypatch.setattr(learner_mod, "train_task", spy)
    learn_task(TaskRequest(ckpt=path, task=2, epochs=1, device="cpu"))
    assert seen.keys() == saved.keys()
    for name in saved:
        assert torch.equal(seen[name], saved[name]), f"{name}: scores re-initialised for task 2"
    after = load_checkpoint(path).model.subnet_layers()
    assert any(not torch.equal(after[n].scores.detach(), saved[n]) for n in saved)  # and then trained


# ---- one task's training -----------------------------------------------------------------------


def _small_mlp():
    torch.manual_seed(0)
    model = build_model(ModelConfig("mlp", (1, 20, 20), (16,)))
    model.add_task(1, 2)
    return model


def test_best_epoch_is_restored_and_the_mask_is_top_c_of_its_scores():
    model = _small_mlp()
    settings = TrainSettings(task=1, capacity=0.25, epochs=4, batch_size=8, lr=1e-2, seed=0)
    result = train_task(model, image_task(1), settings, None, CPU)
    losses = [s.val_loss for s in result.history]
    assert len(result.history) == 4
    assert result.best_epoch == 1 + losses.index(min(losses))
    assert [s.is_best for s in result.history][result.best_epoch - 1]
    assert result.masks is not None
    for name, layer in model.subnet_layers().items():
        scores = layer.scores.detach().abs().reshape(-1)
        k = round(0.25 * scores.numel())
        expected = torch.zeros_like(scores, dtype=torch.bool)
        expected[torch.argsort(-scores, stable=True)[:k]] = True
        assert torch.equal(result.masks[name].reshape(-1), expected), name


def test_finetune_trains_every_weight_and_returns_no_mask():
    model = _small_mlp()
    before = model.layers[0].weight.detach().clone()
    result = train_task(model, image_task(1), TrainSettings(1, 1.0, 1, 8, 1e-3, 0, method="finetune"), None, CPU)
    assert result.masks is None
    assert (model.layers[0].weight.detach() != before).float().mean() > 0.9


def test_a_frozen_weight_changed_during_training_is_an_internal_error():
    model = _small_mlp()
    frozen = {n: torch.zeros_like(l.weight, dtype=torch.bool) for n, l in model.subnet_layers().items()}
    frozen["layers.0"][0, 0] = True

    def vandal(_batch):
        with torch.no_grad():
            model.layers[0].weight[0, 0] += 1.0

    with pytest.raises(WsnError, match="frozen weights of layer 'layers.0' changed"):
        train_task(
            model, image_task(1), TrainSettings(1, 0.5, 1, 8, 1e-3, 0), frozen, CPU, TrainCallbacks(on_batch_end=vandal)
        )


def test_cpu_training_is_bit_reproducible(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path in (a, b):
        learn_task(TaskRequest(ckpt=path, task=1, epochs=2, device="cpu", seed=3))
    ta, tb = checkpoint_arrays(load_checkpoint(a)), checkpoint_arrays(load_checkpoint(b))
    assert ta.keys() == tb.keys()
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    c = tmp_path / "c.pt"
    learn_task(TaskRequest(ckpt=c, task=1, epochs=2, device="cpu", seed=4))
    assert not np.array_equal(
        checkpoint_arrays(load_checkpoint(c))["layer/layers.0/weight"], ta["layer/layers.0/weight"]
    )
