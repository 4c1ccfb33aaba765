"""Train-step time of WSN against the same network trained dense, and against the paper's step.

    python benchmarks/speed.py [--quick] [--device cpu|cuda] [--configs ...] [--variants ...]

Every variant of a config is measured in the same process, in alternating blocks (this machine is
shared and noisy), and quoted as the median over blocks of its ratio to the `dense` block beside it
(with the quartiles in the JSON line); absolute times are printed only on a GPU.
Variants (all with Adam, lr 1e-3, one old task freezing a random 30% of every layer, c = 0.3):
- dense: the plain network, every weight trains (the fine-tune baseline);
- wsn: wsn's step as train-task runs it (fused C kernels on one CPU thread when built; on CUDA the
  sync-free static selection);
- wsn-torch: the same step with torch operations only ($WSN_KERNELS=torch);
- floor: wsn's torch step with the selection free (the mask fixed): the cost of scores, masking
  and straight-through gradients alone;
- paper: the paper's step reimplemented from its description: a sort of |score| per layer per step,
  the mask |score| >= the threshold, gradients of frozen weights zeroed after backward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import emit, machine  # noqa: E402

from wsncli.engine.nn.models import ModelConfig, build_model  # noqa: E402
from wsncli.engine.nn.selection import kernels_available  # noqa: E402
from wsncli.engine.runtime import choose_threads  # noqa: E402

CONFIGS = {
    "mlp-100-b10": (ModelConfig("mlp", (784,), (100, 100)), 10),
    "mlp-100-b64": (ModelConfig("mlp", (784,), (100, 100)), 64),
    "mlp-1000-b64": (ModelConfig("mlp", (784,), (1000, 1000)), 64),
    "conv-b64": (ModelConfig("conv", (3, 32, 32), ()), 64),
    "resnet18-b64": (ModelConfig("resnet18", (3, 32, 32), ()), 64),
}
VARIANTS = ("dense", "wsn", "wsn-torch", "floor", "paper")
CAPACITY = 0.3


class PaperMask(torch.autograd.Function):
    """The official straight-through mask: sort |score|, keep >= the k-th largest, pass grads through."""

    @staticmethod
    def forward(ctx, scores, k):
        flat = scores.abs().flatten()
        threshold = flat.sort().values[flat.numel() - k]
        return (scores.abs() >= threshold).float()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class Setup:
    """One variant of one config: model, optimizer, inputs, and what the step does."""

    def __init__(self, name: str, variant: str, device: torch.device) -> None:
        config, self.batch = CONFIGS[name]
        self.variant, self.device = variant, device
        torch.manual_seed(0)
        self.model = build_model(config)
        self.threads = choose_threads(sum(l.weight.numel() for l in self.model.subnet_layers().values()), None)
        torch.set_num_threads(self.threads)
        self.model.add_task(1, 10)
        self.model.add_task(2, 10)
        self.model.to(device)
        layers = self.model.subnet_layers()
        params = list(self.model.heads["2"].parameters())
        g = torch.Generator().manual_seed(1)
        self.frozen = {n: (torch.rand(l.weight.shape, generator=g) < CAPACITY).to(device) for n, l in layers.items()}
        if variant == "dense":
            self.model.dense()
            params += [l.weight for l in layers.values()]
        else:
            params += [p for l in layers.values() for p in (l.weight, l.scores)]
            self.model.train_subnet(CAPACITY, self.frozen)
            if variant == "floor":
                for layer in layers.values():
                    fixed = layer.current_mask()
                    layer.current_mask = lambda f=fixed: f
            if variant == "paper":
                self._paper_forward()
        self.optimizer = torch.optim.Adam(params, lr=1e-3, fused=device.type in ("cpu", "cuda"))
        self.x = torch.randn(self.batch * 8, *config.input_shape, device=device)  # (8B, *input)
        self.y = torch.randint(0, 10, (self.batch * 8,), device=device)

    def _paper_forward(self) -> None:
        for layer in self.model.subnet_layers().values():

            def effective(layer=layer):
                return layer.weight * PaperMask.apply(layer.scores, layer.k)

            layer.effective_weight = effective

    def steps(self, n: int) -> float:
        """Seconds per training step over n steps."""
        env = os.environ.get("WSN_KERNELS")
        os.environ["WSN_KERNELS"] = "torch" if self.variant in ("wsn-torch", "floor", "paper") else ""
        torch.set_num_threads(self.threads)
        self.model.train()
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            for i in range(n):
                j = (i % 8) * self.batch
                loss = F.cross_entropy(self.model(self.x[j : j + self.batch], 2), self.y[j : j + self.batch])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.variant == "paper":
                    with torch.no_grad():
                        for name, layer in self.model.subnet_layers().items():
                            layer.weight.grad[self.frozen[name]] = 0
                self.optimizer.step()
            sync()
        finally:
            os.environ["WSN_KERNELS"] = env or ""
        return (time.perf_counter() - start) / n


def measure(
    name: str, variants: list[str], device: torch.device, blocks: int, steps: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(median seconds per step, per-block ratios to the dense block beside it) of every variant."""
    setups = {v: Setup(name, v, device) for v in variants}
    for s in setups.values():
        s.steps(max(2, steps // 4))  # warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(blocks):
        for v, s in setups.items():
            times[v].append(s.steps(steps))
    ratios = {v: sorted(t / d for t, d in zip(times[v], times["dense"])) for v in variants if v != "dense"}
    return {v: statistics.median(t) for v, t in times.items()}, ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (for tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per block (default: 100 for small MLPs, 20 for the big one, 6 for convs)",
    )
    args = p.parse_args()
    device = torch.device(args.device)
    variants = ["dense"] + [v for v in args.variants if v != "dense"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {machine()}; device {device}; fused kernels {'built' if kernels_available() else 'not built'}; load "
        f"{load:.2f}"
    )
    print(f"{'config':<14} " + " ".join(f"{v + '/dense':>16}" for v in variants[1:]) + f" {'wsn vs paper':>13}")
    for name in args.configs:
        heavy = name.startswith(("conv", "resnet"))
        blocks, steps = (
            (2, 2) if args.quick else (args.blocks, args.steps or (6 if heavy else (100 if "100-" in name else 20)))
        )
        t, per_block = measure(name, variants, device, blocks, steps)
        ratios = {v: statistics.median(r) for v, r in per_block.items()}  # robust to drift between blocks
        speedup = t["paper"] / t["wsn"] if "paper" in t and "wsn" in t else None
        print(
            f"{name:<14} "
            + " ".join(f"{ratios[v]:>15.2f}x" for v in variants[1:])
            + (f" {speedup:>12.2f}x" if speedup else "")
        )
        spread = {v: [r[len(r) // 4], r[(3 * len(r)) // 4]] for v, r in per_block.items()}
        result = {
            "kind": "speed",
            "config": name,
            "device": str(device),
            "ratios": ratios,
            "ratio_quartiles": spread,
            "wsn_faster_than_paper": speedup,
            "steps_timed": blocks * steps,
            "blocks": blocks,
            "load_before": load,
            "quick": args.quick,
            "load_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "kernels": kernels_available(),
        }
        if device.type == "cuda":
            result["step_seconds"] = t
        emit(result)


if __name__ == "__main__":
    main()
