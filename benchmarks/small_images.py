"""Small image tasks at wsn's defaults: the generated 2-task image-folder set of issue 16 (2 classes per
task, 40 training PNGs per class, 32x32 RGB) learned with `conv` and `resnet18`, default batch size,
4 epochs; every task re-measured from the saved file.

    python benchmarks/small_images.py [--archs conv resnet18] [--seeds 0 1 2] [--epochs 4]

The images: noise with one bright shape whose kind tells the class (task 1: a filled square or a
ring; task 2: a horizontal or a vertical bar), at a random place and colour, so position and colour
say nothing. 20 test images per class. Before exact (precise) BatchNorm statistics both networks sat
at chance (50%) on this set while training accuracy was 100% (docs/RESULTS.md section 6).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, machine, run_sequence

SHAPES = {1: ("square", "ring"), 2: ("hbar", "vbar")}


def draw(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """One (side, side, 3) uint8 image: noise plus one shape of `kind` at a random place and colour."""
    img = rng.integers(0, 90, size=(side, side, 3))
    s = side // 2
    top, left = rng.integers(0, side - s, size=2)
    shape = np.zeros((side, side), bool)
    if kind in ("square", "ring"):
        shape[top : top + s, left : left + s] = True
        if kind == "ring":
            shape[top + 3 : top + s - 3, left + 3 : left + s - 3] = False
    elif kind == "hbar":
        shape[top + s // 2 - 2 : top + s // 2 + 2, left : left + s] = True
    else:
        shape[top : top + s, left + s // 2 - 2 : left + s // 2 + 2] = True
    img[shape] = rng.integers(150, 256, size=3)
    return img.astype(np.uint8)


def make_image_tasks(
    root: Path, per_class: int = 40, test_per_class: int = 20, side: int = 32, seed: int = 0, tasks=(1, 2)
) -> None:
    """root/task<t>/{train,test}/<shape>/<i>.png for each of `tasks`."""
    from PIL import Image

    for task in tasks:
        kinds = SHAPES[task]
        rng = np.random.default_rng([seed, task])
        for split, n in (("train", per_class), ("test", test_per_class)):
            for kind in kinds:
                folder = root / f"task{task}" / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    Image.fromarray(draw(kind, side, rng)).save(folder / f"{i}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["conv", "resnet18"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--per-class", type=int, default=40)
    args = p.parse_args()
    print(f"# {machine()}; load {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        make_image_tasks(root, per_class=args.per_class)
        for arch in args.archs:
            for seed in args.seeds:
                start = time.perf_counter()
                r = run_sequence(
                    Path(tmp) / "m.pt", [1, 2], benchmark="image-folder", data_root=root, arch=arch, epochs=args.epochs,
                    seed=seed, device="cpu",
                )  # fmt: skip
                row = {
                    "kind": "small_images",
                    "arch": arch,
                    "seed": seed,
                    "epochs": args.epochs,
                    "per_class": args.per_class,
                    "acc": round(100 * r["acc"], 2),
                    "per_task": {t: round(100 * a, 2) for t, a in r["per_task"].items()},
                    "bwt": r["bwt"],
                    "forget_free": r["forget_free"],
                    "seconds": round(time.perf_counter() - start, 1),
                    "load": round(os.getloadavg()[0], 2),
                }
                rows.append(row)
                print(f"{arch:9s} seed {seed}: ACC {row['acc']:6.2f}  tasks {row['per_task']}  BWT {r['bwt']}")
    for arch in args.archs:
        accs = [r["acc"] for r in rows if r["arch"] == arch]
        print(f"{arch:9s} mean ACC {statistics.mean(accs):6.2f} (min {min(accs):.2f}) over {len(accs)} seeds")
    for row in rows:
        emit(row)


if __name__ == "__main__":
    main()
