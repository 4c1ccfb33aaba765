"""Data-parallel training with torchrun: real gloo processes on the CPU train what one process does.

Every run is compared with the one-process run of the same request, up to reduction order: 2
processes (split-digits, two tasks), 4 processes with the default batch (the last batch of 3 leaves
one process an empty part), 3 processes with batch 43 (not divisible, last batch of 1), and the
BatchNorm networks conv and resnet18 (statistics of the global batch; conv's dropout masks drawn for
the global batch) on a small image set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.torchrun import (
    assert_same_run,
    copy,
    env,
    exit_codes,
    finish,
    learn_here,
    leftovers,
    start,
    torchrun,
    torchrun_cmd,
)
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.usecases.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_train_what_one_does_and_eval_proves_it(fresh_pair, tmp_path):
    par, one = copy(fresh_pair.par, tmp_path, "par.pt"), copy(fresh_pair.one, tmp_path, "one.pt")
    assert fresh_pair.stdout.count("learned task 1") == 1  # rank 0 reports, once
    proc = torchrun(tmp_path, "train-task", "--task", 2, "--ckpt", "par.pt", "--epochs", 2, "--threads", 1, "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("learned task 2") == 1
    learn_here(one, 2, epochs=2)
    assert leftovers(tmp_path, {"one.pt", "par.pt"}) == []  # no lock, snapshot or temporary left
    report = evaluate_checkpoint(load_checkpoint(par), None, None, torch.device("cpu"))
    assert report.forget_free and all(t.subnet_match for t in report.tasks)
    assert [r.world_size for r in load_checkpoint(par).tasks] == [2, 2]
    assert [r.world_size for r in load_checkpoint(one).tasks] == [1, 1]
    assert_same_run(par, one, tasks=(1, 2))


def test_a_refusal_ends_every_process_with_the_same_code(fresh_pair, tmp_path):
    ckpt = copy(fresh_pair.par, tmp_path)
    before = ckpt.read_bytes()
    proc = torchrun(tmp_path, "train-task", "--task", 1, "--ckpt", ckpt.name, "--epochs", 1, "-q")
    assert proc.returncode != 0
    assert proc.stderr.count("wsn: error:") == 2 and "task 1 is already learned" in proc.stderr  # one line each
    assert exit_codes(proc.stderr) == [1, 1]
    assert ckpt.read_bytes() == before and leftovers(tmp_path, {ckpt.name}) == []


@pytest.mark.parametrize("processes, batch", [(4, None), (3, 43)], ids=["4-default-batch", "3-batch-43"])
def test_any_batch_trains_with_several_processes_as_with_one(processes, batch, tmp_path):
    """Default batch 32 on 259 samples: the last batch (3) is smaller than 4 processes; batch 43 is not
    divisible by 3 and leaves a last batch of 1 (two empty parts). Every process runs backward."""
    extra = () if batch is None else ("--batch-size", batch)
    proc = torchrun(
        tmp_path, "train-task", "--task", 1, "--ckpt", "p.pt", "--epochs", 1, "--no-matrix", *extra, "--threads", 1,
        nproc=processes,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    learn_here(tmp_path / "one.pt", 1, epochs=1, matrix=False, batch_size=batch)
    assert [r.world_size for r in load_checkpoint(tmp_path / "p.pt").tasks] == [processes]
    assert_same_run(tmp_path / "p.pt", tmp_path / "one.pt")


def test_one_step_of_conv_with_biases_has_the_one_process_gradients(tmp_path):
    """The step itself, without training's amplification of noise: BatchNorm over the global batch
    (parts of 7 and 8), dropout drawn for the global batch, per-task biases; every parameter's gradient
    equals the one-process gradient up to reduction order (measured: 2e-6 of the tensor's largest)."""
    tool = Path(__file__).with_name("parallel_gradients.py")
    one = subprocess.run([sys.executable, str(tool), str(tmp_path / "one.pt")], cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert one.returncode == 0, one.stderr
    proc = finish(start([*torchrun_cmd(nproc=2)[:-2], str(tool), str(tmp_path / "par.pt")], ROOT), 120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = torch.load(tmp_path / "par.pt"), torch.load(tmp_path / "one.pt")
    assert sorted(a) == sorted(b) and any(n.startswith("task_biases") for n in a)
    for name, grad in b.items():
        scale = float(grad.abs().max())
        assert scale > 0 and float((a[name] - grad).abs().max()) <= 1e-5 * scale, name


def test_conv_trains_under_two_processes_as_under_one(conv_pair):
    """conv: five BatchNorm layers normalise with the global batch's statistics (parts of 7 and 8, then
    2 and 2) and the dropout masks are drawn for the global batch, so two processes train what one does."""
    assert_same_run(conv_pair.par, conv_pair.one)


def test_resnet18_trains_under_two_processes_as_under_one(images, tmp_path):
    """resnet18 (20 BatchNorm layers, no dropout), one epoch."""
    options = dict(benchmark="npz", data_root=images, arch="resnet18", width=4, epochs=1, batch_size=15, matrix=False)
    options["bias"] = False  # as conv_args
    argv = ["--benchmark", "npz", "--data-root", images, "--arch", "resnet18", "--width", 4, "--epochs", 1, "--no-bias"]
    proc = torchrun(tmp_path, "train-task", "--task", 1, "--ckpt", "p.pt", *argv, "--batch-size", 15, "--no-matrix",
                    "--threads", 1, "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    learn_here(tmp_path / "one.pt", 1, **options)
    assert_same_run(tmp_path / "p.pt", tmp_path / "one.pt")
