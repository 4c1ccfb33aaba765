"""Train-step time of WSN against the same network trained dense, and against the paper's step.

    python benchmarks/speed.py [--quick] [--device cpu|cuda] [--configs ...] [--variants ...] [--threads N]

Every variant of a config is measured in the same process, in alternating blocks (this machine is
shared and noisy), and quoted as the median over blocks of its ratio to the `dense` block beside it
(quartiles in the JSON line). On the CPU the clock is the process's CPU time with one thread (what
other processes' load does not add to) and wall time with more; the JSON line holds both. Absolute
times are printed only on a GPU.
Variants (all with Adam, lr 1e-3, one old task freezing a random 30% of every layer, c = 0.3):
- dense: the plain network, every weight trains, torch's fused Adam (the fine-tune baseline);
- wsn: wsn's step as train-task runs it (CPU: the C kernels, Adam fused into the backward; CUDA: the
  sync-free static selection and torch's fused Adam);
- wsn-torch: the same step in torch operations only ($WSN_KERNELS=torch: the same bits);
- static: the device path on the CPU (nn.subnet.set_static_selection: the sync-free static selection,
  torch's fused Adam), what CUDA runs;
- scores: the floor of any step that trains a score per weight: the dense step whose fused Adam also
  steps a second tensor of every layer's size (gradients given, no selection, no masking);
- paper: the paper's step reimplemented from its description: a sort of |score| per layer per step,
  the mask |score| >= the threshold, gradients of frozen weights zeroed after backward;
- dense-graphs, wsn-graphs (CUDA only): dense and wsn with each step replayed as one CUDA graph.
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
from wsncli.engine.nn.subnet import set_static_selection  # noqa: E402
from wsncli.engine.runtime import choose_threads  # noqa: E402
from wsncli.engine.training.graphed import GraphedStep  # noqa: E402
from wsncli.engine.training.optim import make_optimizer  # noqa: E402

CONFIGS = {
    "mlp-100-b10": (ModelConfig("mlp", (784,), (100, 100)), 10),
    "mlp-100-b64": (ModelConfig("mlp", (784,), (100, 100)), 64),
    "mlp-1000-b64": (ModelConfig("mlp", (784,), (1000, 1000)), 64),
    "conv-b64": (ModelConfig("conv", (3, 32, 32), ()), 64),
    "resnet18-b64": (ModelConfig("resnet18", (3, 32, 32), ()), 64),
}
CPU_VARIANTS = ("dense", "wsn", "wsn-torch", "static", "scores", "paper")
CUDA_VARIANTS = ("dense", "wsn", "paper", "dense-graphs", "wsn-graphs")
ENV = {"wsn-torch": "torch"}  # $WSN_KERNELS per variant (others: unset)
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

    def __init__(self, name: str, variant: str, device: torch.device, threads: int | None) -> None:
        config, self.batch = CONFIGS[name]
        self.variant, self.device = variant, device
        self.env = ENV.get(variant, "")
        torch.manual_seed(0)
        self.model = build_model(config)
        n_weights = sum(l.weight.numel() for l in self.model.subnet_layers().values())
        self.threads = choose_threads(n_weights, threads)
        torch.set_num_threads(self.threads)  # the caller sets the count (the engine only chooses it)
        self.model.add_task(1, 10)
        self.model.add_task(2, 10)
        self.model.to(device)
        layers = self.model.subnet_layers()
        params = list(self.model.heads["2"].parameters())
        g = torch.Generator().manual_seed(1)
        self.frozen = {n: (torch.rand(l.weight.shape, generator=g) < CAPACITY).to(device) for n, l in layers.items()}
        graphed = variant.endswith("-graphs")
        self.extra: list[torch.Tensor] = []
        self.extra_grads: list[torch.Tensor] = []
        with self._env():
            if variant.startswith("dense"):
                self.model.dense()
                params = [l.weight for l in layers.values()] + params
                self.optimizer = torch.optim.Adam(params, lr=1e-3, fused=True, capturable=graphed)
            elif variant == "scores":
                self.model.dense()
                self.extra = [torch.zeros_like(l.weight, requires_grad=True) for l in layers.values()]
                self.extra_grads = [torch.randn_like(t) for t in self.extra]  # as a backward would leave them
                params = [p for l, t in zip(layers.values(), self.extra) for p in (l.weight, t)] + params
                self.optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
            else:
                params = [p for l in layers.values() for p in (l.weight, l.scores)] + params
                set_static_selection(self.model, variant == "static")
                self.model.train_subnet(CAPACITY, self.frozen)
                if variant == "paper":
                    self._paper_forward()
                    self.optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
                else:
                    self.optimizer = make_optimizer(self.model, params, "wsn", 1e-3, device, graphed, False)
        self.x = torch.randn(self.batch * 8, *config.input_shape, device=device)  # (8B, *input)
        self.y = torch.randint(0, 10, (self.batch * 8,), device=device)
        self.step = GraphedStep(self.model, 2, self.optimizer, self._step, self.batch) if graphed else self._step

    def _env(self):
        """$WSN_KERNELS as this variant needs it, for the duration of a with-block."""
        setup = self

        class Env:
            def __enter__(self):
                self.old = os.environ.get("WSN_KERNELS")
                os.environ["WSN_KERNELS"] = setup.env

            def __exit__(self, *exc):
                os.environ["WSN_KERNELS"] = self.old or ""

        return Env()

    def _paper_forward(self) -> None:
        for layer in self.model.subnet_layers().values():

            def effective(layer=layer):
                return layer.weight * PaperMask.apply(layer.scores, layer.k)

            layer.effective_weight = effective

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x, 2)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for extra, grad in zip(self.extra, self.extra_grads):
            extra.grad = grad
        if self.variant == "paper":
            with torch.no_grad():
                for name, layer in self.model.subnet_layers().items():
                    layer.weight.grad[self.frozen[name]] = 0
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def steps(self, n: int) -> tuple[float, float]:
        """(wall, CPU) seconds per training step over n steps."""
        with self._env():
            torch.set_num_threads(self.threads)
            self.model.train()
            sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                j = (i % 8) * self.batch
                self.step(self.x[j : j + self.batch], self.y[j : j + self.batch])
            sync()
            return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n


def measure(
    name: str, variants: list[str], device: torch.device, blocks: int, steps: int, threads: int | None
) -> tuple[dict[str, list[tuple[float, float]]], int, dict[str, str]]:
    """Per variant, the (wall, CPU) seconds per step of every block; the thread count; and, per graphed
    variant whose capture failed (its steps then ran eagerly), why."""
    setups = {v: Setup(name, v, device, threads) for v in variants}
    for s in setups.values():
        s.steps(max(4, steps // 4))  # warm-up (and, for the graphed variants, capture)
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(blocks):
        for v, s in setups.items():
            times[v].append(s.steps(steps))
    failed = {v: s.step.failed for v, s in setups.items() if isinstance(s.step, GraphedStep) and s.step.failed}
    return times, setups["dense"].threads, failed


def quartiles(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return [q[0], q[2]]


def block_ratios(times: dict[str, list[tuple[float, float]]], clock: int) -> dict[str, list[float]]:
    """Per variant, its seconds per step over dense's in the block beside it, every block (clock 0: wall, 1: CPU)."""
    return {v: [t[clock] / d[clock] for t, d in zip(ts, times["dense"])] for v, ts in times.items() if v != "dense"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (for tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=None, choices=sorted(set(CPU_VARIANTS + CUDA_VARIANTS)))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: as train-task chooses)")
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--repeats", type=int, default=1, help="independent runs per config (fresh networks each)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per block (default: 100 for small MLPs, 20 for the big one, 6 for convs)",
    )
    args = p.parse_args()
    device = torch.device(args.device)
    allowed = CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS
    variants = ["dense"] + [v for v in (args.variants or allowed) if v != "dense" and v in allowed]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# {machine()}; device {device}; fused kernels {'built' if kernels_available() else 'not built'}; load "
        f"{load:.2f}"
    )
    print(
        f"{'config':<14} {'threads':>7} "
        + " ".join(f"{v + '/dense':>22}" for v in variants[1:])
        + "   (median [min-max of the runs' medians])"
    )
    for name in args.configs:
        heavy = name.startswith(("conv", "resnet"))
        blocks, steps = (
            (2, 2) if args.quick else (args.blocks, args.steps or (6 if heavy else (100 if "100-" in name else 20)))
        )
        runs = [measure(name, variants, device, blocks, steps, args.threads) for _ in range(args.repeats)]
        threads = runs[0][1]
        failed = {v: why for _, _, f in runs for v, why in f.items()}
        clock = "cpu" if device.type == "cpu" and threads == 1 else "wall"
        pooled: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
        run_medians: dict[str, list[float]] = {v: [] for v in variants[1:]}
        for times, _, _ in runs:
            for i, kind in enumerate(("wall", "cpu")):
                for v, r in block_ratios(times, i).items():
                    pooled[kind].setdefault(v, []).extend(r)
                    if kind == clock:
                        run_medians[v].append(statistics.median(r))
        ratios = {v: statistics.median(r) for v, r in pooled[clock].items()}
        print(
            f"{name:<14} {threads:>7} "
            + " ".join(
                f"{ratios[v]:>9.2f}x [{min(run_medians[v]):.2f}-{max(run_medians[v]):.2f}]" for v in variants[1:]
            )
        )
        result = {
            "kind": "speed",
            "config": name,
            "device": str(device),
            "threads": threads,
            "clock": clock,
            "ratios": ratios,
            "ratio_quartiles": {v: quartiles(r) for v, r in pooled[clock].items()},
            "run_medians": run_medians,
            "ratios_wall": {v: statistics.median(r) for v, r in pooled["wall"].items()},
            "ratios_cpu": {v: statistics.median(r) for v, r in pooled["cpu"].items()},
            "steps_timed": blocks * steps * args.repeats,
            "blocks": blocks,
            "repeats": args.repeats,
            "load_before": load,
            "quick": args.quick,
            "load_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "kernels": kernels_available(),
        }
        if "paper" in ratios and "wsn" in ratios:
            result["wsn_faster_than_paper"] = ratios["paper"] / ratios["wsn"]
        if device.type == "cuda":
            result["step_seconds"] = {
                v: statistics.median(w for times, _, _ in runs for w, _ in times[v]) for v in variants
            }
            result["graphs_failed"] = failed
        emit(result)


if __name__ == "__main__":
    main()
