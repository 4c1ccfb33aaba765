"""What exact (precise) BatchNorm statistics cost: one task's training time with the per-epoch
recomputation against the same training without it, in one process, in alternating blocks (ratios only).

    python benchmarks/precise_bn_cost.py [--archs conv resnet18] [--blocks 3] [--samples 512] [--epochs 1]

Synthetic 3x32x32 2-class data, batch 64, one thread. The recomputation is one eval-mode forward pass
over the training split per epoch, so about a third of an epoch's training compute is expected.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from common import emit, machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import image_task  # noqa: E402
from wsncli.engine.nn.models import ModelConfig, build_model  # noqa: E402
from wsncli.engine.training import loop  # noqa: E402
from wsncli.engine.training.loop import TrainSettings, train_task  # noqa: E402


def seconds(arch: str, data, epochs: int, precise: bool) -> float:
    real = loop.recompute_statistics
    loop.recompute_statistics = real if precise else (lambda *_a, **_k: False)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch, (3, 32, 32)))
        model.add_task(1, 2)
        start = time.perf_counter()
        train_task(model, data, TrainSettings(1, 0.5, epochs, 64, 1e-3, 0), None, torch.device("cpu"))
        return time.perf_counter() - start
    finally:
        loop.recompute_statistics = real


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["conv", "resnet18"])
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"# {machine()}; load {os.getloadavg()[0]:.2f}")
    data = image_task(1, n_train=args.samples, shape=(3, 32, 32))
    for arch in args.archs:
        ratios = []
        for _ in range(args.blocks):
            base = seconds(arch, data, args.epochs, False)
            ratios.append(seconds(arch, data, args.epochs, True) / base)
        print(f"{arch}: precise / momentum statistics, per block: {', '.join(f'{r:.2f}' for r in ratios)}")
        emit({"kind": "precise_bn_cost", "arch": arch, "ratios": ratios, "load": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
