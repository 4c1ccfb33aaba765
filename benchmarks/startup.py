"""Start-up time of the installed `wsn` command: help, version, a subcommand's help, and `inspect`.

    python benchmarks/startup.py [--repeats 7]

Each command runs as a real subprocess (the `wsn` script on PATH), `--repeats` times in turn with
the others; the table gives the best and the median wall time of each, one JSON line per command
after it. `inspect` reads a 5-task split-digits checkpoint made first in a temporary folder. These
are absolute CPU times on a shared machine: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"startup.py: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default 7)")
    args = parser.parse_args()
    wsn = shutil.which("wsn")
    if wsn is None:
        raise SystemExit("startup.py: no `wsn` on PATH (pip install -e . first)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for task in range(1, 6):
            subprocess.run(
                [
                    wsn,
                    "train-task",
                    "--task",
                    str(task),
                    "--ckpt",
                    "model.pt",
                    "--benchmark",
                    "split-digits",
                    "--epochs",
                    "1",
                ],
                cwd=folder,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        commands = {
            "wsn --help": [wsn, "--help"],
            "wsn --version": [wsn, "--version"],
            "wsn eval -h": [wsn, "eval", "-h"],
            "wsn inspect model.pt": [wsn, "inspect", "model.pt"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, argv in commands.items():
                times[name].append(_time(argv, folder))
    load = os.getloadavg()[0]
    print(
        f"{'command':24} {'best s':>8} {'median s':>9}   (load {load:.2f}, {os.cpu_count()} CPUs, python "
        f"{sys.version.split()[0]})"
    )
    for name, values in times.items():
        print(f"{name:24} {min(values):8.3f} {statistics.median(values):9.3f}")
    for name, values in times.items():
        print(
            json.dumps(
                {
                    "command": name,
                    "best_s": round(min(values), 4),
                    "median_s": round(statistics.median(values), 4),
                    "repeats": args.repeats,
                    "load": round(load, 2),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
