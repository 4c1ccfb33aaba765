"""Benchmark every mask codec: size (bits per weight per task) against the entropy bounds, and speed.

    python benchmarks/bench_codecs.py                       # random masks, 10M weights x 7 tasks
    python benchmarks/bench_codecs.py --weights 100000      # quick smoke run
    python benchmarks/bench_codecs.py --wsnm run/masks.wsnm # a real multi-task sequence

Prints one JSON line per (source, codec) result, then a table. Speeds are Mbit of mask per second
through the whole .wsnm pack / unpack (best of --repeat runs), by wall-clock and by process CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from formats import CODECS, LayerMasks, pack, unpack  # noqa: E402
from formats.stats import conditional_entropy_bits, mask_entropy_bits  # noqa: E402

DENSITIES = (0.03, 0.1, 0.3, 0.5)
# REFERENCE.md 4: 7-bit ASCII + Huffman on random masks, bits per weight
ASCII7_HUFFMAN_REFERENCE = {0.03: 0.237, 0.1: 0.475, 0.3: 0.885, 0.5: 1.000}


def bounds(layers: list[LayerMasks]) -> dict[str, float]:
    """Independent and 3-context conditional entropy, bits per weight per task."""
    total = sum(m.size for layer in layers for m in layer.masks)
    independent = sum(mask_entropy_bits(m) for layer in layers for m in layer.masks)
    conditional = sum(sum(conditional_entropy_bits(layer.masks)) for layer in layers)
    return {"independent": independent / total, "conditional": conditional / total}


def measure(layers: list[LayerMasks], task_ids: list[int], codec: str, repeat: int) -> dict:
    """Pack and unpack `repeat` times; check the round trip; best wall-clock and CPU times."""
    bits = sum(m.size for layer in layers for m in layer.masks)
    best = {"encode": float("inf"), "decode": float("inf"), "encode_cpu": float("inf"), "decode_cpu": float("inf")}
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        data = pack(layers, task_ids, codec)
        wall_mid, cpu_mid = time.perf_counter(), time.process_time()
        packed = unpack(data)
        wall_end, cpu_end = time.perf_counter(), time.process_time()
        for key, value in (
            ("encode", wall_mid - wall),
            ("decode", wall_end - wall_mid),
            ("encode_cpu", cpu_mid - cpu),
            ("decode_cpu", cpu_end - cpu_mid),
        ):
            best[key] = min(best[key], value)
    for want, got in zip(layers, packed.layers):
        if not all(np.array_equal(a, b) for a, b in zip(want.masks, got.masks)):
            raise SystemExit(f"{codec}: round trip failed on layer {want.name!r}")
    return {
        "codec": codec,
        "bytes": len(data),
        "bits_per_weight_per_task": 8 * len(data) / bits,
        **{f"{key}_mbit_s": bits / max(seconds, 1e-9) / 1e6 for key, seconds in best.items()},
    }


def random_source(weights: int, tasks: int, density: float, seed: int) -> tuple[list[LayerMasks], list[int]]:
    rng = np.random.default_rng(seed)
    masks = [rng.random(weights, dtype=np.float32) < density for _ in range(tasks)]
    return [LayerMasks("random", (weights,), masks)], list(range(tasks))


def run_source(name: str, layers, task_ids, codecs, repeat: int, density: float | None) -> list[dict]:
    bound = bounds(layers)
    results = []
    for codec in codecs:
        result = {
            "source": name,
            "density": density,
            "weights": sum(int(np.prod(l.shape)) for l in layers),
            "tasks": len(task_ids),
            **measure(layers, task_ids, codec, repeat),
            "bounds": bound,
        }
        result["vs_conditional"] = (
            result["bits_per_weight_per_task"] / bound["conditional"] if bound["conditional"] else None
        )
        if density in ASCII7_HUFFMAN_REFERENCE and codec in ("ascii7-huffman", "paper-huffman"):
            result["reference"] = ASCII7_HUFFMAN_REFERENCE[density]
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
        results.append(result)
    return results


def print_table(results: list[dict]) -> None:
    head = (
        f"{'source':<14}{'c':>6} {'codec':<15}{'bits/w/task':>12}{'indep.':>8}{'cond.':>8}"
        f"{'x cond':>8}{'enc Mb/s':>10}{'dec Mb/s':>10}{'enc cpu':>9}{'dec cpu':>9}  reference"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        c = f"{r['density']:.2f}" if r["density"] is not None else "-"
        ratio = f"{r['vs_conditional']:.3f}" if r["vs_conditional"] else "-"
        ref = ""
        if "reference" in r:
            ref = f"{r['reference']:.3f} ({100 * (r['bits_per_weight_per_task'] / r['reference'] - 1):+.1f}%)"
        print(
            f"{r['source']:<14}{c:>6} {r['codec']:<15}{r['bits_per_weight_per_task']:>12.4f}"
            f"{r['bounds']['independent']:>8.4f}{r['bounds']['conditional']:>8.4f}{ratio:>8}"
            f"{r['encode_mbit_s']:>10.0f}{r['decode_mbit_s']:>10.0f}{r['encode_cpu_mbit_s']:>9.0f}"
            f"{r['decode_cpu_mbit_s']:>9.0f}  {ref}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, default=10_000_000, help="weights per random mask")
    parser.add_argument("--tasks", type=int, default=7, help="random masks per density (7 fills a paper group)")
    parser.add_argument("--densities", type=float, nargs="*", default=list(DENSITIES))
    parser.add_argument("--wsnm", type=Path, action="append", default=[], help="also benchmark masks from this file")
    parser.add_argument("--codecs", nargs="*", default=list(CODECS), choices=CODECS)
    parser.add_argument("--repeat", type=int, default=2, help="timing runs per codec (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    results = []
    for density in args.densities:
        layers, task_ids = random_source(args.weights, args.tasks, density, args.seed)
        results += run_source("random", layers, task_ids, args.codecs, args.repeat, density)
    for path in args.wsnm:
        packed = unpack(path.read_bytes())
        results += run_source(path.name[:14], packed.layers, packed.task_ids, args.codecs, args.repeat, None)
    print_table(results)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nMb/s: Mbit of mask per second of wall-clock time; cpu: per second of this process's CPU "
        f"time (steadier when other work shares the CPU; load average now {load:.2f} on "
        f"{os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
