"""The multi-dataset sequence (MNIST, Fashion-MNIST, Animal-MNIST, UCI digits: one task per domain)
with the paper's networks, WSN against dense fine-tuning, every task re-measured from the saved file.

    python benchmarks/multi_dataset.py [--archs resnet18 conv] [--capacities 0.1 0.5] [--seeds 0 1 2]
        [--epochs 2] [--train-limit 3000] [--jobs 2]

Each run learns tasks 1..4 in order into a fresh checkpoint (the engine `wsn train-task` uses, with
`--benchmark multi-dataset --image-size 32 --train-limit N`), then evaluates every task from the file.
Per task it reports the accuracy when learned and at the end, the share of the network's weights its
mask uses, the share of those already used by earlier tasks (reuse), and the weights it added. Data
comes from benchmarks/fetch_data.py (checked against wsn's pinned digests). Prints a table and one
JSON line per run; runs go `--jobs` at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import emit, machine, run_sequence

TASKS = (1, 2, 3, 4)
DOMAINS = ("MNIST", "Fashion", "Animal", "digits")


def one_run(spec: dict) -> dict:
    """Learn the four tasks under `spec`, re-measure them from the file, describe each task's mask."""
    from wsncli.engine.store.reader import read_checkpoint_file
    from wsncli.engine.usecases.inspect import describe_checkpoint

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "m.pt"
        r = run_sequence(
            ckpt,
            list(TASKS),
            benchmark="multi-dataset",
            arch=spec["arch"],
            method=spec["method"],
            capacity=spec["capacity"],
            epochs=spec["epochs"],
            batch_size=spec["batch_size"],
            seed=spec["seed"],
            image_size=spec["image_size"],
            train_limit=spec["train_limit"],
            device="cpu",
            data_root=spec["data_root"],
            threads=spec["threads"],
            matrix=False,
        )
        desc = describe_checkpoint(read_checkpoint_file(ckpt), ckpt)
    tasks = {}
    for s in desc.tasks:
        tasks[str(s.record.task)] = {
            "at_learning": 100 * s.record.accuracy,
            "now": 100 * r["per_task"][s.record.task],
            "best_epoch": s.record.best_epoch,
            "mask_density": None if s.mask_density is None else 100 * s.mask_density,
            "reuse_of_earlier": None if s.reuse_of_earlier is None else 100 * s.reuse_of_earlier,
            "new_weights": s.new_weights,
        }
    return {
        "kind": "multi_dataset",
        **{k: v for k, v in spec.items() if k != "data_root"},
        "input": "1x32x32 (28x28 zero-padded)",
        "acc": 100 * r["acc"],
        "bwt": 100 * (r["bwt"] or 0.0),
        "forget_free": r["forget_free"],
        "capacity_used": None if r["capacity_used"] is None else 100 * r["capacity_used"],
        "tasks": tasks,
        "train_seconds": r["train_seconds"],
        "total_seconds": r["total_seconds"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["resnet18", "conv"])
    p.add_argument("--capacities", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--methods", nargs="+", default=["wsn", "finetune"], choices=("wsn", "finetune"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-limit", type=int, default=3000, help="training images per task (stratified subset)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--data-root", type=Path, default=None, help="default: fetch_data.py's root (fetched if needed)")
    p.add_argument("--table-from", type=Path, default=None, help="only print the table of a log's JSON lines")
    args = p.parse_args()
    if args.table_from is not None:
        lines = args.table_from.read_text().splitlines()
        print_table(
            [r for r in map(json.loads, (x for x in lines if x.startswith("{"))) if r["kind"] == "multi_dataset"]
        )
        return
    if args.data_root is None:
        from fetch_data import DEFAULT_ROOT, ensure_animal, ensure_fashion, ensure_mnist

        ensure_mnist(DEFAULT_ROOT / "mnist"), ensure_fashion(DEFAULT_ROOT), ensure_animal(DEFAULT_ROOT)
        args.data_root = DEFAULT_ROOT
    print(f"# {machine()}; load {os.getloadavg()[0]:.2f}; {args.jobs} runs at a time, {args.threads} thread(s) each")
    specs = []
    for seed in args.seeds:  # seed-major: every configuration of seed 0 first
        for arch in args.archs:
            for method in args.methods:
                for capacity in args.capacities if method == "wsn" else [None]:
                    specs.append(
                        {
                            "arch": arch,
                            "method": method,
                            "capacity": capacity,
                            "seed": seed,
                            "epochs": args.epochs,
                            "batch_size": args.batch_size,
                            "train_limit": args.train_limit,
                            "image_size": args.image_size,
                            "threads": args.threads,
                            "data_root": args.data_root,
                        }
                    )
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(one_run, specs):
            rows.append(row)
            emit(row)
    print(f"# all runs: {time.perf_counter() - start:.0f} s wall; load {os.getloadavg()[0]:.2f}")
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    def mean_sd(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f}±{sd:.2f}"

    head = f"{'arch':<9} {'method':<13} {'seeds':>5} {'ACC %':>12} {'BWT':>12} {'forget-free':>11} {'used %':>7}"
    print("\n" + head + "".join(f" {d + ' now/learned':>20}" for d in DOMAINS) + f" {'train s':>8}")
    keys = sorted({(r["arch"], r["method"], r["capacity"] or 0.0) for r in rows})
    for arch, method, capacity in keys:
        rs = [r for r in rows if (r["arch"], r["method"], r["capacity"] or 0.0) == (arch, method, capacity)]
        label = f"{method} c={capacity:g}" if method == "wsn" else method
        used = "-" if rs[0]["capacity_used"] is None else f"{statistics.mean(r['capacity_used'] for r in rs):.1f}"
        per_task = "".join(
            f" {statistics.mean(r['tasks'][str(t)]['now'] for r in rs):>9.2f}/"
            f"{statistics.mean(r['tasks'][str(t)]['at_learning'] for r in rs):<10.2f}"
            for t in TASKS
        )
        print(
            f"{arch:<9} {label:<13} {len(rs):>5} {mean_sd([r['acc'] for r in rs]):>12} "
            f"{mean_sd([r['bwt'] for r in rs]):>12} {sum(r['forget_free'] for r in rs):>5}/{len(rs):<5} {used:>7}"
            f"{per_task} {statistics.mean(r['train_seconds'] for r in rs):>8.0f}"
        )


if __name__ == "__main__":
    main()
