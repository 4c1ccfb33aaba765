"""Task inference without task ids (`wsn eval --infer-task`): both rules, per sample and per batch.

    python benchmarks/task_inference.py --benchmark pmnist --tasks 10 --epochs 3 --train-limit 10000
    python benchmarks/task_inference.py --benchmark split-mnist --tasks 5 --epochs 3

Learns the tasks with the engine behind `wsn train-task` (or reuses --ckpt), then, from the saved
file, measures for each rule: task-inference accuracy per sample, accuracy with the inferred task
(class-incremental), accuracy with the true task, and the same with one task per --per-batch test
inputs of one task. Cost per input is a ratio: the rule's wall time over one plain forward with the
true task (`predict`), measured in the same process in alternating blocks on the same inputs.
Memory: how far a fresh process's peak resident memory (Linux VmHWM, reset just before the run) rises
above its resident memory while the rule runs, beside the plain forward's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch  # noqa: E402
from common import emit, machine

from wsncli.engine.store.checkpoint import load_checkpoint  # noqa: E402
from wsncli.engine.usecases.infer import InferRequest, infer_tasks, inference_inputs  # noqa: E402
from wsncli.engine.usecases.infer_eval import evaluate_inference  # noqa: E402
from wsncli.engine.usecases.learn import TaskRequest, learn_task  # noqa: E402
from wsncli.engine.usecases.predict import predict_task  # noqa: E402
from wsncli.engine.usecases.record import recorded_task_data  # noqa: E402

CPU = torch.device("cpu")


def learn(args) -> Path:
    ckpt = Path(args.ckpt)
    if ckpt.exists():
        return ckpt
    for task in range(1, args.tasks + 1):
        learn_task(
            TaskRequest(
                ckpt=ckpt,
                task=task,
                benchmark=args.benchmark,
                n_tasks=args.tasks,
                epochs=args.epochs,
                batch_size=args.batch_size,
                capacity=args.capacity,
                train_limit=args.train_limit,
                arch=args.arch,
                width=args.width,
                image_size=args.image_size,
                data_root=args.data_root,
                device="cpu",
                matrix=False,
            )
        )
    return ckpt


def timing(ckpt, x, task: int, blocks: int, per_batch: int) -> dict:
    """Seconds per input of each rule over the plain forward, alternating blocks (median ratio)."""
    runs = {
        "predict": lambda: predict_task(ckpt, task, x_raw, CPU, False, "x"),
        "entropy": lambda: infer_tasks(ckpt, x, InferRequest("entropy"), CPU),
        "oneshot": lambda: infer_tasks(ckpt, x, InferRequest("oneshot"), CPU),
        "entropy_batch": lambda: infer_tasks(ckpt, x, InferRequest("entropy", per_batch), CPU),
        "oneshot_batch": lambda: infer_tasks(ckpt, x, InferRequest("oneshot", per_batch), CPU),
    }
    data = recorded_task_data(ckpt, task, Path(ckpt.meta.data_root))
    x_raw = data.raw_test[: len(x)]
    seconds = {name: [] for name in runs}
    for _ in range(blocks):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - start) / len(x))
    base = seconds["predict"]
    return {
        f"{name}_per_forward": statistics.median(s / b for s, b in zip(seconds[name], base))
        for name in ("entropy", "oneshot", "entropy_batch", "oneshot_batch")
    }


def peak_memory(ckpt_path: Path, mode: str, inputs: Path) -> int:
    """How much a fresh process's peak resident memory (VmHWM, reset just before; KiB) exceeds its
    resident memory while it runs `mode` once on the saved inputs (checkpoint and inputs loaded first)."""
    cmd = [sys.executable, __file__, "--ckpt", str(ckpt_path), "--child", mode, "--child-inputs", str(inputs)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def child(args) -> None:
    import numpy as np

    ckpt = load_checkpoint(args.ckpt)
    task = ckpt.learned()[0]
    saved = np.load(args.child_inputs)
    raw, inputs = saved["raw"], saved["inputs"]
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the current RSS
    before = _status_kib("VmRSS")
    if args.child == "predict":
        predict_task(ckpt, task, raw, CPU, False, "x")
    else:
        infer_tasks(ckpt, inputs, InferRequest(args.child), CPU)
    print(_status_kib("VmHWM") - before)  # the peak's growth while it ran


def _status_kib(field: str) -> int:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--benchmark", default="pmnist")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--capacity", type=float, default=0.5)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--arch", default=None, help="default: the benchmark's (mlp)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--data-root", type=Path, default=Path.home() / ".cache" / "wsn")
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--per-batch", type=int, default=64)
    parser.add_argument("--timing-inputs", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--cost-only", action="store_true", help="only the cost and memory probe (no accuracy)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-inputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(1)
        return child(args)
    args.ckpt = args.ckpt or f"/tmp/wsn-infer-{args.benchmark}.pt"
    torch.set_num_threads(1)
    start = time.perf_counter()
    ckpt_path = learn(args)
    learn_seconds = time.perf_counter() - start
    ckpt = load_checkpoint(ckpt_path)
    print(
        f"{args.benchmark}: {len(ckpt.learned())} tasks; {machine()}; load {open('/proc/loadavg').read().split()[:3]}"
    )
    for method in () if args.cost_only else ("entropy", "oneshot"):
        report = evaluate_inference(ckpt, None, args.data_root, CPU, InferRequest(method, args.per_batch))
        sample, batch = report.overall(), report.overall(batch=True)
        row = {
            "benchmark": args.benchmark,
            "tasks": len(ckpt.learned()),
            "method": method,
            "task_inference_per_sample": sample.task_accuracy,
            "accuracy_inferred_task_per_sample": sample.accuracy_inferred_task,
            "per_batch": args.per_batch,
            "task_inference_per_batch": batch.task_accuracy,
            "accuracy_inferred_task_per_batch": batch.accuracy_inferred_task,
            "accuracy_true_task": report.accuracy_true_task,
            "per_task_inference": {t.task: round(t.per_sample.task_accuracy, 4) for t in report.tasks},
        }
        print(
            f"{method:8s} task inferred {100 * sample.task_accuracy:6.2f}%  acc. inferred task "
            f"{100 * sample.accuracy_inferred_task:6.2f}%  | per {args.per_batch}: {100 * batch.task_accuracy:6.2f}% / "
            f"{100 * batch.accuracy_inferred_task:6.2f}%  | true task {100 * report.accuracy_true_task:6.2f}%"
        )
        emit(row)
    task = ckpt.learned()[0]
    x = inference_inputs(recorded_task_data(ckpt, task, args.data_root))[: args.timing_inputs]
    cost = timing(ckpt, x, task, args.blocks, args.per_batch)
    import numpy as np

    saved = Path(f"{args.ckpt}.inputs.npz")
    raw = recorded_task_data(ckpt, task, args.data_root).raw_test[: len(x)]
    np.savez(saved, inputs=x, raw=raw)
    memory = {m: peak_memory(ckpt_path, m, saved) for m in ("predict", "entropy", "oneshot")}
    cost.update({f"{m}_peak_growth_kib": v for m, v in memory.items()})
    cost.update({"benchmark": args.benchmark, "timing_inputs": len(x), "learn_seconds": round(learn_seconds, 1)})
    cost["load_after"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(cost))
    emit(cost)


if __name__ == "__main__":
    main()
