"""WSN against dense fine-tuning on the same network: the forgetting that WSN removes.

    python benchmarks/forgetting.py --benchmarks split-digits split-fashion --seeds 0 1 2

Both methods learn the same 5 tasks with the same MLP, heads, data, epochs and seeds; the baseline
(`wsn train-task --method finetune`) has no masks and no freezing. Every task is re-evaluated from
the saved checkpoint after the last task; BWT = 1/(T-1) sum over the tasks before the last of
(accuracy now - accuracy when learned), the standard definition (the last task is left out).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import emit, machine, run_sequence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", nargs="+", default=["split-digits", "split-fashion"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--capacity", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=None, help="default: the benchmark's")
    p.add_argument("--tasks", type=int, default=5)
    args = p.parse_args()
    print(f"# {machine()}")
    rows = []
    for bench in args.benchmarks:
        for method in ("wsn", "finetune"):
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    r = run_sequence(
                        Path(tmp) / "m.pt",
                        list(range(1, args.tasks + 1)),
                        benchmark=bench,
                        method=method,
                        capacity=args.capacity if method == "wsn" else None,
                        epochs=args.epochs,
                        seed=seed,
                        device="cpu",
                    )
                row = {
                    "kind": "forgetting",
                    "benchmark": bench,
                    "method": method,
                    "seed": seed,
                    "acc": 100 * r["acc"],
                    "bwt": 100 * r["bwt"],
                    "forget_free": r["forget_free"],
                    "per_task": r["per_task"],
                    "epochs": args.epochs,
                    "matrix": r["matrix"],
                }
                rows.append(row)
                emit(row)
    print(f"\n{'benchmark':<14} {'method':<9} {'ACC %':>13} {'BWT (pts)':>14} {'forget-free':>12}")
    for bench in args.benchmarks:
        for method in ("wsn", "finetune"):
            rs = [r for r in rows if r["benchmark"] == bench and r["method"] == method]
            acc = [r["acc"] for r in rs]
            bwt = [r["bwt"] for r in rs]
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            ff = f"{sum(r['forget_free'] for r in rs)}/{len(rs)} runs"
            print(
                f"{bench:<14} {method:<9} {statistics.mean(acc):>7.2f}±{sd(acc):<5.2f} "
                f"{statistics.mean(bwt):>+8.2f}±{sd(bwt):<5.2f} {ff:>12}"
            )
            emit(
                {
                    "kind": "forgetting_summary",
                    "benchmark": bench,
                    "method": method,
                    "seeds": len(rs),
                    "acc_mean": statistics.mean(acc),
                    "acc_std": sd(acc),
                    "bwt_mean": statistics.mean(bwt),
                    "bwt_std": sd(bwt),
                    "forget_free_runs": sum(r["forget_free"] for r in rs),
                }
            )


if __name__ == "__main__":
    main()
