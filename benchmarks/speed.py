"""Train-step time, eval throughput and peak memory: WSN against the same network trained dense.

    python benchmarks/speed.py [--quick] [--device cpu|cuda]

Both variants are measured in the same process, in alternating blocks (this machine is shared and
noisy), and quoted as ratios WSN / dense; absolute times are printed for GPUs only. WSN's step
includes everything it does every step: exact top-c selection in every layer, masked forward,
straight-through backward, freezing of the weights earlier tasks use (a random 30% here, as for a
later task), and Adam over weights and scores. Peak memory is measured in a fresh subprocess per
(config, variant, phase): CPU peak RSS growth over the process after setup, or CUDA max allocated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import emit, machine  # noqa: E402

from wsncli.engine.nn.models import ModelConfig, build_model  # noqa: E402
from wsncli.engine.runtime import configure_threads  # noqa: E402

CONFIGS = {
    "mlp-100-b10": (ModelConfig("mlp", (784,), (100, 100)), 10),
    "mlp-100-b64": (ModelConfig("mlp", (784,), (100, 100)), 64),
    "mlp-1000-b64": (ModelConfig("mlp", (784,), (1000, 1000)), 64),
    "conv-b64": (ModelConfig("conv", (3, 32, 32), ()), 64),
}
CAPACITY = 0.3


def setup(name: str, variant: str, device: torch.device):
    """A model with one old task (frozen 30%) and a new task 2 head, plus its optimizer."""
    config, batch = CONFIGS[name]
    torch.manual_seed(0)
    model = build_model(config)
    configure_threads(sum(l.weight.numel() for l in model.subnet_layers().values()), None)
    model.add_task(1, 10)
    model.add_task(2, 10)
    model.to(device)
    params = list(model.heads["2"].parameters())
    if variant == "wsn":
        frozen = {n: torch.rand_like(l.weight) < CAPACITY for n, l in model.subnet_layers().items()}
        model.train_subnet(CAPACITY, frozen)
        params += [p for l in model.subnet_layers().values() for p in (l.weight, l.scores)]
    else:
        model.dense()
        params += [l.weight for l in model.subnet_layers().values()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    x = torch.randn(batch * 8, *config.input_shape, device=device)  # (8B, *input)
    y = torch.randint(0, 10, (batch * 8,), device=device)
    return model, optimizer, x, y, batch


def train_steps(model, optimizer, x, y, batch: int, steps: int) -> float:
    """Seconds per training step over `steps` steps."""
    model.train()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        j = (i % 8) * batch
        loss = F.cross_entropy(model(x[j : j + batch], 2), y[j : j + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def eval_rate(model, x, variant: str, rounds: int) -> float:
    """Inputs per second at inference (WSN: a stored mask, masked weights computed once)."""
    if variant == "wsn":
        model.use_masks(model.current_masks())
    model.eval()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    model(x, 2)
    sync()
    start = time.perf_counter()
    for _ in range(rounds):
        model(x, 2).argmax(1)
    sync()
    return rounds * x.shape[0] / (time.perf_counter() - start)


def measure_ratios(name: str, device: torch.device, blocks: int, steps: int) -> dict:
    setups = {v: setup(name, v, device) for v in ("dense", "wsn")}
    for m, o, x, y, b in setups.values():
        train_steps(m, o, x, y, b, max(2, steps // 4))  # warm-up
    times = {"dense": [], "wsn": []}
    for _ in range(blocks):
        for v in ("dense", "wsn"):
            times[v].append(train_steps(*setups[v], steps))
    step = {v: statistics.median(t) for v, t in times.items()}
    rates = {"dense": [], "wsn": []}
    for _ in range(blocks):
        for v in ("dense", "wsn"):
            m, _, x, _, _ = setups[v]
            rates[v].append(eval_rate(m, x, v, max(2, steps // 2)))
    rate = {v: statistics.median(r) for v, r in rates.items()}
    fulls = sum(l.selector.full_selections for l in setups["wsn"][0].subnet_layers().values())
    return {"step_ratio": step["wsn"] / step["dense"], "eval_ratio": rate["dense"] / rate["wsn"], "dense_step_s": step["dense"],
            "wsn_step_s": step["wsn"], "full_selections": fulls, "steps_timed": blocks * steps}


def _proc_status(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child_memory(name: str, variant: str, phase: str, device: str) -> None:
    """Run in a fresh process: print the peak memory growth of one phase as JSON."""
    dev = torch.device(device)
    model, optimizer, x, y, batch = setup(name, variant, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = _proc_status("VmRSS")
    if phase == "train":
        train_steps(model, optimizer, x, y, batch, 5)
    else:
        eval_rate(model, x, variant, 3)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _proc_status("VmHWM")
    print(json.dumps({"bytes": peak - base}))


def memory_ratio(name: str, phase: str, device: str) -> tuple[float, dict]:
    used = {}
    for variant in ("dense", "wsn"):
        out = subprocess.run([sys.executable, __file__, "--child", name, variant, phase, "--device", device],
                             capture_output=True, text=True, check=True).stdout
        used[variant] = max(1, json.loads(out.strip().splitlines()[-1])["bytes"])
    return used["wsn"] / used["dense"], used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (for tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--child", nargs=3, metavar=("CONFIG", "VARIANT", "PHASE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_memory(*args.child, args.device)
        return
    device = torch.device(args.device)
    print(f"# {machine()}; device {device}")
    print(f"{'config':<14} {'train WSN/dense':>16} {'eval WSN/dense':>15} {'mem train':>10} {'mem eval':>9}")
    for name in args.configs:
        blocks, steps = (2, 3) if args.quick else (5, 40 if name.startswith("conv") else 200)
        r = measure_ratios(name, device, blocks, steps)
        mem_train, raw_train = memory_ratio(name, "train", args.device)
        mem_eval, raw_eval = memory_ratio(name, "eval", args.device)
        print(f"{name:<14} {r['step_ratio']:>15.2f}x {r['eval_ratio']:>14.2f}x {mem_train:>9.2f}x {mem_eval:>8.2f}x")
        result = {"kind": "speed", "config": name, "device": str(device), **r, "mem_train_ratio": mem_train, "mem_eval_ratio": mem_eval,
                  "mem_train_bytes": raw_train, "mem_eval_bytes": raw_eval, "quick": args.quick}
        if device.type != "cuda":  # absolute CPU times are not comparable across runs here
            result.pop("dense_step_s"), result.pop("wsn_step_s")
        emit(result)


if __name__ == "__main__":
    main()
