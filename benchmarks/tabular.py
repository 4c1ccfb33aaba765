"""A tabular task sequence of our own making: three real scikit-learn data sets as npz tasks with
non-contiguous labels, different feature counts and features on very different scales, learned by wsn
at its defaults (standardised, per-task biases, fewer features zero-padded by wsn itself), beside the
same run without biases and a standardised logistic-regression reference trained on each task alone.

    python benchmarks/tabular.py [--seeds 0 1 2] [--variants defaults no-bias]

Tasks (each file holds the set's own features; no padding by hand):
  1. breast cancer (569 x 30, features from 1e-3 to 4e3), labels {3, 7};
  2. wine (178 x 13, features from 0.1 to 1.7e3), labels {10, 20, 30};
  3. iris (150 x 4) with its first feature in millimetres x 1000, labels {5, 42, 100}.
Each task: 25% stratified test split (fixed seed). Needs scikit-learn (this script only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from common import emit, machine, run_sequence

VARIANTS = {
    "defaults": {},
    "no-bias": {"bias": False},
    "raw": {"standardize": False},
    "0.2-defaults": {"bias": False, "epochs": 10, "batch_size": 32},  # what wsn 0.2 did for npz
}


def make_tasks(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    x_iris = iris.data.copy()
    x_iris[:, 0] *= 10_000  # cm -> "micrometres": one feature thousands of times larger
    sets = [
        ("breast-cancer", load_breast_cancer().data, load_breast_cancer().target, [3, 7]),
        ("wine", load_wine().data, load_wine().target, [10, 20, 30]),
        ("iris", x_iris, iris.target, [5, 42, 100]),
    ]
    out = []
    for t, (name, x, y, labels) in enumerate(sets, start=1):
        y = np.asarray(labels)[y]
        xtr, xte, ytr, yte = train_test_split(x.astype(np.float64), y, test_size=0.25, stratify=y, random_state=t)
        np.savez(folder / f"task{t}.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
        out.append((name, xtr, ytr, xte, yte))
    return out


def logistic_reference(tasks) -> list[float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return [
        100 * make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(xtr, ytr).score(xte, yte)
        for _, xtr, ytr, xte, yte in tasks
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["defaults", "no-bias"])
    args = p.parse_args()
    print(f"# {machine()}; load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tasks = make_tasks(folder)
        names = [name for name, *_ in tasks]
        reference = logistic_reference(tasks)
        rows = []
        for variant in args.variants:
            for seed in args.seeds:
                r = run_sequence(
                    folder / "m.pt", [1, 2, 3], benchmark="npz", data_root=folder, seed=seed, device="cpu",
                    **VARIANTS[variant],
                )  # fmt: skip
                row = {
                    "kind": "tabular",
                    "variant": variant,
                    "seed": seed,
                    "acc": 100 * r["acc"],
                    "bwt": 100 * (r["bwt"] or 0.0),
                    "forget_free": r["forget_free"],
                    "per_task": {name: 100 * r["per_task"][t] for t, name in enumerate(names, start=1)},
                    "load": round(os.getloadavg()[0], 2),
                }
                rows.append(row)
                emit(row)
    emit(
        {
            "kind": "tabular_reference",
            "model": "StandardScaler + LogisticRegression, per task",
            "acc": statistics.mean(reference),
            "per_task": dict(zip(names, reference)),
        }
    )
    print(f"\n{'method':<34} {'ACC %':>13} {'BWT':>6} " + " ".join(f"{name:>14}" for name in names))
    for variant in args.variants:
        rs = [r for r in rows if r["variant"] == variant]
        acc = [r["acc"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        per = [statistics.mean(r["per_task"][name] for r in rs) for name in names]
        bwt = statistics.mean(r["bwt"] for r in rs)
        print(
            f"{'wsn, ' + variant:<34} {statistics.mean(acc):>7.2f}±{sd:<5.2f} {bwt:>6.2f} "
            + " ".join(f"{a:>14.2f}" for a in per)
        )
        gaps = [ref - a for ref, a in zip(reference, per)]
        print(f"{'  gap to the reference (points)':<34} {statistics.mean(gaps):>13.2f} {'':>6} "
              + " ".join(f"{g:>14.2f}" for g in gaps))  # fmt: skip
    print(
        f"{'logistic regression (per task)':<34} {statistics.mean(reference):>13.2f} {'-':>6} "
        + " ".join(f"{a:>14.2f}" for a in reference)
    )


if __name__ == "__main__":
    main()
