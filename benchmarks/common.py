"""Shared helpers of the benchmark scripts: run a task sequence through the engine, print results."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from wsncli.engine.store.checkpoint import load_checkpoint  # noqa: E402
from wsncli.engine.usecases.evaluate import evaluate_checkpoint  # noqa: E402
from wsncli.engine.usecases.learn import TaskRequest, learn_task  # noqa: E402


def machine() -> str:
    """One line naming the machine the numbers come from."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def run_sequence(ckpt: Path, tasks: list[int], **request) -> dict:
    """Learn `tasks` in order into a fresh checkpoint with the engine `wsn train-task` uses, then
    re-evaluate every task from the saved file (never from memory). Returns the measured figures."""
    if ckpt.exists():
        ckpt.unlink()
    start = time.perf_counter()
    for task in tasks:
        learn_task(TaskRequest(ckpt=ckpt, task=task, **request))
    train_seconds = time.perf_counter() - start
    checkpoint = load_checkpoint(ckpt)
    data_root = request.get("data_root")
    device = request.get("device", "cpu")
    report = evaluate_checkpoint(
        checkpoint,
        None,
        data_root,
        torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
        ),
    )
    return {
        "acc": report.acc,
        "bwt": report.bwt,  # standard BWT: the tasks before the last, re-measured from the file
        "forget_free": report.forget_free,
        "capacity_used": report.capacity_used,
        "per_task": {t.task: t.accuracy for t in report.tasks},
        "matrix": report.matrix.rows,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
        "checkpoint_bytes": ckpt.stat().st_size,
    }


def packed_bits(ckpt: Path, codec: str = "context") -> float:
    """Bits per weight per task of the checkpoint's masks packed with `codec` (the .wsnm file's size)."""
    from wsncli.engine.store.reader import read_checkpoint_file
    from wsncli.engine.usecases.pack import pack_checkpoint_masks

    return pack_checkpoint_masks(read_checkpoint_file(ckpt), codec, ckpt.name).report["bits_per_weight_per_task"]


def emit(result: dict) -> None:
    """One JSON line per result (after the table, grep-able with `grep '^{'`)."""
    print(json.dumps(result, sort_keys=True), flush=True)
