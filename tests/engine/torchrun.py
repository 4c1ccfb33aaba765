"""Helpers of the multi-process tests: real torchrun launches of `wsn train-task` (gloo, CPU)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from wsncli.engine.store.checkpoint import checkpoint_arrays, load_checkpoint

INJECT = Path(__file__).with_name("parallel_inject.py")
ATOL = 1e-4  # the same run up to reduction order (sums over parts instead of the whole batch)
NORM_ATOL = 1e-2  # BatchNorm running statistics integrate every activation of every step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("WSN_DATA_ROOT", "WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out.update(OMP_NUM_THREADS="1", **extra)
    return out


def torchrun_cmd(*args, nproc: int = 2, launcher: tuple = (), inject: bool = False) -> list[str]:
    """`python -m torch.distributed.run ... -m wsncli ARGS` (or the fault-injecting wrapper)."""
    if not launcher:
        launcher = ("--master-addr", "127.0.0.1", "--master-port", str(free_port()))
    program = [str(INJECT)] if inject else ["-m", "wsncli"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        *launcher,
        *program,
        *map(str, args),
    ]


def start(cmd: list[str], cwd: Path, **extra) -> subprocess.Popen:
    """A launcher in its own process group, so that `finish` can end its workers with it."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(launcher: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """Wait for a launcher; past `timeout`, kill it and every worker it started (none outlives a test)."""
    try:
        out, err = launcher.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)  # a worker torchrun left behind, or all on a timeout
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err)


def torchrun(cwd: Path, *args, nproc: int = 2, inject: bool = False, launcher: tuple = (), timeout: int = 300, **extra):
    cmd = torchrun_cmd(*args, nproc=nproc, launcher=launcher, inject=inject)
    return finish(start(cmd, cwd, **extra), timeout)


def learn_here(path: Path, task: int, **options):
    """The one-process run of the same request, in this process, on one thread like the workers."""
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    return learn_task(TaskRequest(ckpt=path, task=task, device="cpu", threads=1, **options))


def arrays(path: Path) -> dict[str, np.ndarray]:
    return checkpoint_arrays(load_checkpoint(path))


def assert_same_bits(a: Path, b: Path) -> None:
    """Every tensor of two checkpoints (weights, scores, heads, norms, predictions, masks) bit for bit."""
    x, y = arrays(a), arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert np.array_equal(x[name], y[name]), name


def assert_same_run(parallel: Path, single: Path, tasks=(1,)) -> None:
    """A data-parallel checkpoint holds what the one-process run learned, up to reduction order: every
    weight, score and head value within ATOL, except the few that reduction-order noise sent another way
    (a score at the threshold selecting another weight for a step, or Adam's normalised step turning a
    near-zero gradient's noise into a full step): at most 1 in 100 values of a tensor, measured up to
    1 in 1,000; BatchNorm statistics, recomputed over the whole split with those weights, within
    NORM_ATOL except at most 1 in 20 (measured: 2 of 128 in one conv layer); the
    masks agree on more than 99% of the weights. Without the global batch's BatchNorm statistics
    about half of every conv layer's values differ."""
    par, one = load_checkpoint(parallel), load_checkpoint(single)
    a, b = checkpoint_arrays(par), checkpoint_arrays(one)
    for name in a:
        if name.startswith(("layer/", "head/", "norm/")):
            atol = NORM_ATOL if name.startswith("norm/") else ATOL
            share = 20 if name.startswith("norm/") else 100  # at most 1 in `share` values beyond atol
            close = np.isclose(a[name], b[name], atol=atol, rtol=0)
            assert close.sum() >= close.size - max(1, close.size // share), (
                f"{name}: {(~close).sum()} of {close.size} values differ by more than {atol}, at most "
                f"{np.abs(a[name] - b[name]).max():.3g}"
            )
    agree = np.mean([(par.masks[t][n] == one.masks[t][n]).float().mean().item() for t in tasks for n in par.masks[t]])
    assert agree > 0.99


def exit_codes(torchrun_stderr: str) -> list[int]:
    """Each failed worker's exit code, from torchrun's failure report."""
    return [int(c) for c in re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", torchrun_stderr, re.M)]


def worker_traceback(text: str) -> bool:
    """Whether a worker printed a Python traceback (torchrun's own report names no wsn file)."""
    return any(line.strip().startswith("File ") and "wsncli" in line for line in text.splitlines())


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Files in folder other than `keep` (a lock, a snapshot or a temporary left behind)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def copy(src: Path, folder: Path, name: str = "m.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, folder / name)
    return folder / name
