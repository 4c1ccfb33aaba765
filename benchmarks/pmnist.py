"""PMNIST, the paper's protocol: 10 tasks, MLP 784-100-100, 5 epochs, batch 10, Adam 1e-3, 10% val.

    python benchmarks/pmnist.py --capacity 0.03 0.1 0.3 0.5 --seeds 0 1 2 --jobs 2

Each (capacity, seed) run learns the 10 tasks with the engine behind `wsn train-task`, then
re-evaluates every task from the saved checkpoint (ACC, BWT, forget-free proof). CAP follows the
paper: fraction of weights used by any task + mask storage (bits per weight per task of the packed
`context` file × T / 32). Prints a table and one JSON line per run and per capacity.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import emit, machine, packed_bits, run_sequence

PAPER = {0.03: (94.84, 19.87), 0.05: (95.65, 26.49), 0.1: (96.14, 40.41), 0.3: (96.41, 77.73), 0.5: (96.24, 98.10)}


def one_run(capacity: float, seed: int, args) -> dict:
    import shutil

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pmnist.pt"
        r = run_sequence(
            path,
            list(range(1, args.tasks + 1)),
            benchmark="pmnist",
            capacity=capacity,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=1e-3,
            seed=seed,
            device=args.device,
            data_root=args.data_root,
            n_tasks=args.tasks,
            threads=1 if args.device == "cpu" else None,
        )
        bits = packed_bits(path)
        if args.keep:
            shutil.copyfile(path, args.keep / f"pmnist-c{capacity}-s{seed}.pt")
    return {
        "benchmark": "pmnist",
        "capacity": capacity,
        "seed": seed,
        "tasks": args.tasks,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "device": args.device,
        "acc": 100 * r["acc"],
        "bwt": 100 * (r["bwt"] or 0.0),
        "forget_free": r["forget_free"],
        "used": 100 * r["capacity_used"],
        "mask_bits_per_weight_per_task": bits,
        "cap": 100 * (r["capacity_used"] + bits * args.tasks / 32),
        "train_seconds": r["train_seconds"],
        "total_seconds": r["total_seconds"],
        "checkpoint_bytes": r["checkpoint_bytes"],
        "per_task": r["per_task"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--capacity", type=float, nargs="+", default=[0.03, 0.1, 0.3, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (each single-threaded)")
    p.add_argument(
        "--data-root", type=Path, default=None, help="folder with mnist/ IDX files (default: fetch_data cache)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--keep", type=Path, default=None, help="copy each run's checkpoint into this folder")
    args = p.parse_args()
    if args.data_root is None:
        from fetch_data import ensure_mnist

        args.data_root = ensure_mnist().parent
    print(f"# {machine()}")
    runs = [(c, s) for c in args.capacity for s in args.seeds]
    # CUDA cannot be used in a forked child of a process that touched it: spawn the workers there
    context = multiprocessing.get_context("spawn" if args.device.startswith("cuda") else None)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = [pool.submit(one_run, c, s, args) for c, s in runs]
        results = []
        for f in futures:
            r = f.result()
            results.append(r)
            emit({"kind": "run", **r})
    print(f"\n{'c':>5} {'ACC %':>14} {'CAP %':>8} {'BWT':>6} {'forget-free':>12} {'s/run':>7} | paper ACC / CAP")
    for c in args.capacity:
        rs = [r for r in results if r["capacity"] == c]
        accs = [r["acc"] for r in rs]
        mean, sd = statistics.mean(accs), (statistics.stdev(accs) if len(accs) > 1 else 0.0)
        cap = statistics.mean(r["cap"] for r in rs)
        bwt = statistics.mean(r["bwt"] for r in rs)
        ff = all(r["forget_free"] for r in rs)
        secs = statistics.mean(r["train_seconds"] for r in rs)
        paper = PAPER.get(c)
        print(f"{c:>5} {mean:>8.2f}±{sd:<5.2f} {cap:>8.2f} {bwt:>6.2f} {str(ff):>12} {secs:>7.0f} | {paper}")
        emit(
            {
                "kind": "summary",
                "benchmark": "pmnist",
                "capacity": c,
                "seeds": len(rs),
                "acc_mean": mean,
                "acc_std": sd,
                "cap_mean": cap,
                "bwt_mean": bwt,
                "forget_free": ff,
                "train_seconds_mean": secs,
                "paper_acc": paper and paper[0],
                "paper_cap": paper and paper[1],
            }
        )


if __name__ == "__main__":
    main()
