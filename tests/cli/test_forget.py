"""`wsn forget-task` on the split-digits checkpoint (tasks learned 2, 1, 3): task 2, the first, trained
weights that both later tasks reuse (task 1's mask lies inside task 2's). Counts are checked against
a brute force over the masks."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from tests.cli.helpers import assert_error, assert_ok, json_out, wsn
from tests.conftest import DIGITS_CAPACITY
from wsncli.engine.nn.models import build_model
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.store.container import ADOPT
from wsncli.engine.store.lock import CheckpointLock
from wsncli.engine.store.schema import to_model_config
from wsncli.engine.usecases.forget import weight_accounting
from wsncli.engine.usecases.predict import predict_task
from wsncli.engine.usecases.record import recorded_task_data

CPU = torch.device("cpu")


def _brute_force(ckpt, task):
    """(trained, released, {later task: shared}) by looping over every weight's mask bits in numpy."""
    order = ckpt.learned()
    earlier, others = order[: order.index(task)], [t for t in order if t != task]
    trained = released = 0
    shared = {t: 0 for t in others}
    for name in ckpt.model.subnet_layers():
        bits = {t: ckpt.masks[t][name].numpy().reshape(-1) for t in order}
        for i in range(len(bits[task])):
            if bits[task][i] and not any(bits[t][i] for t in earlier):
                trained += 1
                released += not any(bits[t][i] for t in others)
                for t in others:
                    shared[t] += bool(bits[t][i])
    return trained, released, {t: n for t, n in shared.items() if n}


def _outputs(ckpt):
    """Each task's test logits (as probabilities, float32 bits) through predict."""
    return {
        t: predict_task(ckpt, t, recorded_task_data(ckpt, t, None).raw_test, CPU, True, "x").probabilities
        for t in ckpt.learned()
    }


def test_forget_releases_exactly_the_weights_no_other_task_uses(digits_ckpt):
    before = load_checkpoint(digits_ckpt)
    trained, released, shared = _brute_force(before, 2)
    assert shared.get(1, 0) > 0 and shared.get(3, 0) > 0 and released > 0  # later tasks reuse task 2's weights
    outputs_before = _outputs(before)
    doc = json_out(wsn("forget-task", "--ckpt", digits_ckpt, "--task", 2, "--json"))
    assert (doc["trained"], doc["released"], doc["still_used"]) == (trained, released, trained - released)
    assert doc["still_used_by"] == {str(t): n for t, n in shared.items()} and doc["task_ids"] == [1, 3]
    after = load_checkpoint(digits_ckpt)
    assert after.learned() == [1, 3] and [r.order for r in after.tasks] == [1, 2]
    for t in (1, 3):  # every other task bit-identical: digests, masks, outputs
        assert after.task_record(t).subnet_digest == before.task_record(t).subnet_digest
        for name in after.model.subnet_layers():
            assert torch.equal(after.masks[t][name], before.masks[t][name])
        assert np.array_equal(_outputs(after)[t], outputs_before[t])
    eval_doc = json_out(wsn("eval", "--ckpt", digits_ckpt, "--json", "-q"))
    total = sum(layer.weight.numel() for layer in before.model.subnet_layers().values())
    assert doc["capacity_before"] - doc["capacity_after"] == pytest.approx(released / total)
    assert eval_doc["capacity_used"] == doc["capacity_after"]  # capacity accounting: the released weights are free
    assert eval_doc["forget_free"] and [t["status"] for t in eval_doc["tasks"]] == ["proven", "proven"]
    # the later rows of the accuracy matrix lose task 2's column
    assert after.task_record(1).accuracy_row == [] and after.task_record(3).accuracy_row == [
        before.task_record(3).accuracy_row[1]
    ]
    # capacity: the released weights are free; free weights and every score are back to their initial values
    used = after.used_weights()
    union_before = before.used_weights()
    assert sum(int(m.sum()) for m in union_before.values()) - sum(int(m.sum()) for m in used.values()) == released
    torch.manual_seed(after.meta.seed)
    initial = build_model(to_model_config(after.meta.model)).subnet_layers()
    for name, layer in after.model.subnet_layers().items():
        assert torch.equal(layer.weight[~used[name]], initial[name].weight.detach()[~used[name]])
        assert torch.equal(layer.weight[used[name]], before.model.subnet_layers()[name].weight[used[name]])
        assert torch.equal(layer.scores, initial[name].scores.detach())


def test_forget_removes_every_tensor_of_the_task_and_it_can_be_learned_again(digits_ckpt):
    from tests.ckpt_tools import read_parts

    before = load_checkpoint(digits_ckpt)
    released = weight_accounting(before, 2)[1]  # checked against the brute force above
    assert sum(int(m.sum()) for m in released.values()) == _brute_force(before, 2)[1] > 0
    assert_ok(wsn("forget-task", "-c", digits_ckpt, "-t", 2))
    metadata, arrays = read_parts(digits_ckpt)
    assert not [k for k in arrays if "/2/" in k or k.endswith("/2")], sorted(arrays)
    assert '"task":2,' not in metadata["meta"]
    assert not any(bool((m & released[n]).any()) for n, m in load_checkpoint(digits_ckpt).used_weights().items())
    assert_ok(wsn("train-task", "-c", digits_ckpt, "-t", 2, "--epochs", 1, "--capacity", DIGITS_CAPACITY[2], "-q"))
    again = load_checkpoint(digits_ckpt)
    assert again.learned() == [1, 3, 2]
    reused = sum(int((again.masks[2][n] & released[n]).sum()) for n in released)
    assert reused > 0  # the task learned again trained released weights
    assert json_out(wsn("eval", "-c", digits_ckpt, "--json", "-q"))["forget_free"]


def test_forget_refuses_with_one_line(digits_ckpt, finetune_ckpt, tmp_path):
    untouched = digits_ckpt.read_bytes()
    assert_error(wsn("forget-task", "-c", digits_ckpt, "-t", 7), 1, "task 7 is not learned")
    assert_error(wsn("forget-task", "-c", finetune_ckpt, "-t", 1), 2, "needs a wsn checkpoint")
    assert_error(wsn("forget-task", "-c", tmp_path / "none.pt", "-t", 1), 1, "no such checkpoint")
    with CheckpointLock(digits_ckpt):
        assert_error(wsn("forget-task", "-c", digits_ckpt, "-t", 1), 1, "in use")
    pending = digits_ckpt.with_name(digits_ckpt.name + ".resume")
    pending.write_bytes(b"a train-task in progress")
    assert_error(wsn("forget-task", "-c", digits_ckpt, "-t", 1), 2, "in progress")
    pending.unlink()
    assert digits_ckpt.read_bytes() == untouched


def test_forget_signs_like_train_task_follows_a_symlink_and_keeps_the_mode(digits_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "k")
    assert_error(wsn("forget-task", "-c", digits_ckpt, "-t", 1), 1, "not signed")  # no implicit adoption
    assert_ok(wsn("train-task", "-c", digits_ckpt, "-t", 4, "--epochs", 1, "--adopt-unsigned", "-q"))
    monkeypatch.delenv("WSN_CHECKPOINT_KEY")
    assert_error(wsn("forget-task", "-c", digits_ckpt, "-t", 1), 1, "the checkpoint is signed")
    monkeypatch.setenv("WSN_CHECKPOINT_KEY", "k")
    os.chmod(digits_ckpt, 0o600)
    link = tmp_path / "link.pt"
    link.symlink_to(digits_ckpt)
    listing = sorted(os.listdir(tmp_path))
    assert_ok(wsn("forget-task", "-c", link, "-t", 1))
    assert link.is_symlink() and oct(digits_ckpt.stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(tmp_path)) == listing  # no debris
    assert load_checkpoint(digits_ckpt).signature == "verified"
    assert load_checkpoint(digits_ckpt, ADOPT).learned() == [2, 3, 4]  # task 1 gone


@pytest.mark.parametrize("task", [1, 3])
def test_forgetting_a_middle_or_the_last_task(digits_ckpt, tmp_path, task):
    copy = tmp_path / "c.pt"
    shutil.copyfile(digits_ckpt, copy)
    before = load_checkpoint(copy)
    trained, released, _ = _brute_force(before, task)
    doc = json_out(wsn("forget-task", "-c", copy, "-t", task, "--json"))
    assert (doc["trained"], doc["released"]) == (trained, released)
    if task == 3:  # the last task: nothing later reuses it, every weight it trained is released
        assert released == trained and doc["still_used_by"] == {}
    assert json_out(wsn("eval", "-c", copy, "--json", "-q"))["forget_free"]


def test_forget_refuses_a_damaged_record_or_a_changed_subnetwork_instead_of_restamping(digits_ckpt, tmp_path):
    from tests.ckpt_tools import edit_meta, read_parts, write_parts

    damaged = tmp_path / "damaged.pt"
    shutil.copyfile(digits_ckpt, damaged)
    edit_meta(damaged, lambda meta: meta["tasks"][1].__setitem__("accuracy", 0.5))  # record digest fails
    assert_error(wsn("forget-task", "-c", damaged, "-t", 2), 1, "record digest")
    metadata, arrays = read_parts(digits_ckpt)
    name = next(k for k in arrays if k.startswith("layer/") and k.endswith("/weight"))
    arrays[name] = arrays[name] + np.float32(0.5)  # every weight moved, checksums recomputed
    write_parts(digits_ckpt, metadata, arrays)
    untouched = digits_ckpt.read_bytes()
    assert_error(wsn("forget-task", "-c", digits_ckpt, "-t", 2), 1, "fails its digest")
    assert digits_ckpt.read_bytes() == untouched


def test_forget_and_inference_on_a_user_trunk(tmp_path, monkeypatch):
    """--arch-module: forget-task re-initialises free weights through the user's trunk and proves the
    rest; predict --task auto and eval --infer-task take the same option (entropy; oneshot is refused)."""
    import sys

    from tests.cli.test_arch_module import MOD, TRUNKS

    (tmp_path / f"{MOD}.py").write_text(TRUNKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = ("--arch-module", f"{MOD}:cnn")
    ckpt = tmp_path / "run.wsn"
    try:
        for task in (1, 2, 3):
            assert_ok(wsn("train-task", "-t", task, "-c", ckpt, *arch, "--epochs", 1, "-q"))
        trunk = __import__(MOD).cnn
        before = __import__("wsncli").open_checkpoint(ckpt, arch=trunk)
        _, released, _ = _brute_force(before, 1)
        assert json_out(wsn("forget-task", "-c", ckpt, "-t", 1, *arch, "--json"))["released"] == released
        assert json_out(wsn("eval", "-c", ckpt, *arch, "--json", "-q"))["forget_free"]
        doc = json_out(wsn("eval", "-c", ckpt, *arch, "--infer-task", "--json", "-q"))
        assert doc["inference"]["task_ids"] == [2, 3]
        refused = wsn("eval", "-c", ckpt, *arch, "--infer-task", "--infer", "oneshot", "-q")
        assert_error(refused, 2, "not available for a network from --arch-module")
        np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 17, (4, 64)).astype(np.uint8))
        auto = json_out(wsn("predict", tmp_path / "x.npy", "-c", ckpt, "-t", "auto", *arch, "--json"))
        assert set(auto["inferred_tasks"]) <= {2, 3}
    finally:
        sys.modules.pop(MOD, None)
