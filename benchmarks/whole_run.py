"""A whole run as a user makes it: 10-task PMNIST at c = 0.3 (paper protocol), one `wsn train-task`
process per task, WSN against `--method finetune`, back to back (the two alternate task by task, so
both see the same load), then `wsn eval` of each. Quoted as the ratio WSN / finetune of the summed
wall times; every process's start-up, data loading, accuracy-matrix re-measurement and save counted.

    python benchmarks/whole_run.py [--tasks 10] [--epochs 5] [--data-root ~/.cache/wsn] [--flush-denormal]

On PMNIST some first-layer weights see a nonzero gradient only now and then (pixels that are almost
always 0): between those steps their Adam moments decay through the subnormal range, where the CPU
computes far slower. wsn's own Adam flushes such moments (nn/adam.py); torch's, which fine-tune uses,
does not. `--flush-denormal` runs both with subnormals flushed, the baseline at its fastest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, machine

FLUSH_DENORMAL = (
    "import sys, torch; torch.set_flush_denormal(True); sys.argv[0] = 'wsn'; from wsncli.cli import main; main()"
)


def wsn(*args, env, ok=(0,), flush_denormal=False) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    entry = ["-c", FLUSH_DENORMAL] if flush_denormal else ["-m", "wsncli"]
    proc = subprocess.run([sys.executable, *entry, *map(str, args)], env=env, capture_output=True, text=True)
    if proc.returncode not in ok:
        raise SystemExit(f"wsn {' '.join(map(str, args))} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start, proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--capacity", type=float, default=0.3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--keep", type=Path, default=None, help="copy both checkpoints into this folder")
    p.add_argument(
        "--flush-denormal",
        action="store_true",
        help="run every train-task with subnormal floats flushed to zero (torch.set_flush_denormal): the "
        "fine-tune baseline's Adam then never slows down on subnormal moments",
    )
    args = p.parse_args()
    if args.data_root is None:
        from fetch_data import ensure_mnist

        args.data_root = ensure_mnist().parent
    env = {k: v for k, v in os.environ.items() if k != "WSN_DATA_ROOT"}
    print(f"# {machine()}; load {os.getloadavg()[0]:.2f}")
    seconds = {"wsn": [], "finetune": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {m: Path(tmp) / f"{m}.pt" for m in seconds}
        for t in range(1, args.tasks + 1):
            for method in ("wsn", "finetune"):
                extra = ["--capacity", args.capacity] if method == "wsn" and t == 1 else []
                took, _ = wsn(
                    "train-task",
                    "--task",
                    t,
                    "--ckpt",
                    paths[method],
                    "--benchmark",
                    "pmnist",
                    "--n-tasks",
                    args.tasks,
                    "--epochs",
                    args.epochs,
                    "--batch-size",
                    args.batch_size,
                    "--method",
                    method,
                    "--device",
                    args.device,
                    "--data-root",
                    args.data_root,
                    "-q",
                    *extra,
                    env=env,
                    flush_denormal=args.flush_denormal,
                )
                seconds[method].append(took)
                print(f"task {t:>2} {method:<9} {took:8.1f} s", flush=True)
        evals = {}
        for method, path in paths.items():
            took, proc = wsn("eval", "--ckpt", path, "--json", "-q", env=env, ok=(0, 3))  # finetune forgets: exit 3
            doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
            evals[method] = {
                "seconds": took,
                "acc": doc.get("acc"),
                "bwt": doc.get("bwt"),
                "forget_free": doc.get("forget_free"),
                "per_task": {t["task"]: t["accuracy"] for t in doc.get("tasks", [])},
            }
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, args.keep / f"pmnist-{method}.pt")
    total = {m: sum(s) for m, s in seconds.items()}
    ratio = total["wsn"] / total["finetune"]
    print(
        f"\nwhole run: wsn {total['wsn']:.0f} s, finetune {total['finetune']:.0f} s, ratio {ratio:.2f}x; "
        f"eval ACC wsn {evals['wsn']['acc']}, finetune {evals['finetune']['acc']}"
    )
    emit(
        {
            "kind": "whole_run",
            "benchmark": "pmnist",
            "tasks": args.tasks,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "capacity": args.capacity,
            "device": args.device,
            "seconds": seconds,
            "total": total,
            "ratio_wsn_over_finetune": ratio,
            "flush_denormal": args.flush_denormal,
            "eval": evals,
            "load_after": os.getloadavg()[0],
        }
    )


if __name__ == "__main__":
    main()
