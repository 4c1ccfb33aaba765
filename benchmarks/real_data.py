"""Real images with the paper's networks: split-MNIST and split-Fashion-MNIST (5 tasks of 2 classes,
28x28 zero-padded to 32x32) with `resnet18` and `conv`, every task re-measured from the saved file.

    python benchmarks/real_data.py [--benchmarks split-mnist split-fashion] [--archs resnet18 conv] [--epochs 1]

MNIST comes from benchmarks/fetch_data.py's cache, Fashion-MNIST from the Debian package
dataset-fashion-mnist. Prints a table and one JSON line per run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import emit, machine, run_sequence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", nargs="+", default=["split-mnist", "split-fashion"])
    p.add_argument("--archs", nargs="+", default=["resnet18", "conv"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--capacity", type=float, default=0.5)
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", type=Path, default=None, help="folder with mnist/ (default: fetch_data cache)")
    args = p.parse_args()
    if args.data_root is None:
        from fetch_data import ensure_mnist

        args.data_root = ensure_mnist().parent
    print(f"# {machine()}; load {os.getloadavg()[0]:.2f}")
    rows = []
    for bench in args.benchmarks:
        for arch in args.archs:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                r = run_sequence(
                    Path(tmp) / "m.pt",
                    list(range(1, args.tasks + 1)),
                    benchmark=bench,
                    arch=arch,
                    image_size=32,
                    capacity=args.capacity,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    device="cpu",
                    data_root=None if bench == "split-fashion" else args.data_root,
                    threads=args.threads,
                )
            row = {
                "kind": "real_data",
                "benchmark": bench,
                "arch": arch,
                "input": "1x32x32 (28x28 zero-padded)",
                "capacity": args.capacity,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "tasks": args.tasks,
                "seed": args.seed,
                "acc": 100 * r["acc"],
                "bwt": 100 * (r["bwt"] or 0.0),
                "forget_free": r["forget_free"],
                "capacity_used": 100 * r["capacity_used"],
                "per_task": r["per_task"],
                "train_seconds": r["train_seconds"],
                "total_seconds": time.perf_counter() - start,
                "load_after": os.getloadavg()[0],
            }
            rows.append(row)
            emit(row)
    print(f"\n{'benchmark':<14} {'arch':<9} {'ACC %':>7} {'BWT':>6} {'forget-free':>12} {'used %':>7} {'train s':>8}")
    for r in rows:
        print(
            f"{r['benchmark']:<14} {r['arch']:<9} {r['acc']:>7.2f} {r['bwt']:>6.2f} {str(r['forget_free']):>12} "
            f"{r['capacity_used']:>7.2f} {r['train_seconds']:>8.0f}"
        )


if __name__ == "__main__":
    main()
