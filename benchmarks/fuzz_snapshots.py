"""The snapshot campaign and the memory table of benchmarks/fuzz_loaders.py (`--target snapshot`,
`--target memory`); run that script, not this module."""

from __future__ import annotations

import collections
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tests.reliability.fuzzing import mutate_bytes
from tests.reliability.mutate_snapshot import exercise_snapshot, mutate_snapshot
from tests.reliability.trust_tools import interrupted, learn, peak_script, request, untrained_checkpoint_script

MIB = 1 << 20


def _refusal_class(message: str) -> str:
    """The first words of a refusal, without quoted values, lists and numbers."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|\[[^\]]*\]|\([^)]*\)", "", message)
    text = re.sub(r"(?<![A-Za-z\d-])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", "N", text)
    return " ".join(text.split()[:7])


class _Hang(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Hang


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def snapshot_campaign(args, work: Path) -> int:
    """--iterations byte-level then --structure-iterations structure-aware snapshot mutants, each
    resumed as train-task would; returns the number of bugs (hangs, memory, tracebacks, or a refusal
    that is not one line naming the snapshot and --restart)."""
    os.environ.pop("WSN_CHECKPOINT_KEY", None)
    ckpt = work / "snap.pt"
    learn(ckpt, 1, epochs=1)
    snap = interrupted(ckpt, 2, stop_after=2)
    ckpt_bytes, snap_bytes = ckpt.read_bytes(), snap.read_bytes()
    rng = random.Random(args.seed)
    levels = ["bytes"] * args.iterations + ["structure"] * args.structure_iterations
    counts: collections.Counter = collections.Counter()
    refusals: collections.Counter = collections.Counter()
    bugs = {"hang": 0, "memory": 0, "traceback": 0}
    rss_start, growth, slowest = _max_rss_mib(), 0.0, 0.0
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.perf_counter()
    for i, level in enumerate(levels):
        kind, mutant = (
            ("bytes", mutate_bytes(snap_bytes, rng)) if level == "bytes" else mutate_snapshot(snap_bytes, rng)
        )
        if mutant == snap_bytes:  # a mutation that changed nothing (zeros over zeros): not a mutant
            counts[f"{level}: unchanged"] += 1
            continue
        t0 = time.perf_counter()
        try:
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            outcome, message = exercise_snapshot(ckpt, snap, ckpt_bytes, mutant, request(ckpt, 2))
        except _Hang:
            outcome, message = "hang", None
        except Exception:  # noqa: BLE001 - anything but wsn's own refusal is what we hunt
            outcome, message = "traceback", traceback.format_exc().strip().splitlines()[-1][:160]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        if outcome not in ("resumed", "refused", "restarted", "diverged", "hang", "traceback"):
            outcome, message = "traceback", f"refused with {outcome}, not one line naming the snapshot"
        counts[f"{level}: {outcome}"] += 1
        if outcome == "refused":
            refusals[_refusal_class(message)] += 1
        new_growth = _max_rss_mib() - rss_start
        if new_growth > args.max_rss_growth and not bugs["memory"]:
            bugs["memory"] += 1
        growth = max(growth, new_growth)
        if outcome in ("hang", "traceback"):
            bugs[outcome] += 1
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"snapshot-{outcome}-{args.seed}-{i}.resume").write_bytes(mutant)
            print(f"snapshot #{i} ({kind}): {outcome} {message or f'{seconds:.1f} s'}")
    signal.signal(signal.SIGALRM, previous)
    summary = {
        "target": "snapshot",
        "seed": args.seed,
        "mutants": len(levels),
        "byte_level": args.iterations,
        "structure_aware": args.structure_iterations,
        "outcomes": dict(sorted(counts.items())),
        "refusal_classes": dict(refusals.most_common(12)),
        "refusal_class_count": len(refusals),
        "hangs": bugs["hang"],
        "tracebacks": bugs["traceback"],
        "peak_rss_growth_mib": round(growth, 1),
        "memory_flag": bugs["memory"] > 0,
        "seconds": round(time.perf_counter() - start, 1),
        "slowest_ms": round(1000 * slowest),
    }
    print(f"snapshot: {len(levels)} mutants in {summary['seconds']} s (slowest {summary['slowest_ms']} ms)")
    for key, n in sorted(counts.items()):
        print(f"  {n:7d}  {key}")
    print("  refusals by message class (top 12):")
    for key, n in refusals.most_common(12):
        print(f"  {n:7d}  {key}")
    args.snapshot_summary = summary
    return sum(bugs.values())


# -- memory per file size ---------------------------------------------------------------------------------
def hidden_for(mib: int) -> tuple[int, int]:
    """MLP 64-h-h hidden sizes whose checkpoint (8 bytes per masked weight) is about `mib` MiB."""
    h = int(((64 / 2) ** 2 + mib * MIB / 8) ** 0.5 - 64 / 2)
    return (h, h)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WSN_CHECKPOINT_KEY", "WSN_MAX_CHECKPOINT_BYTES")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def memory_table(args, work: Path) -> int:
    """Peak memory growth of reading and loading valid files of growing size and sparse files;
    returns 1 when a measurement failed or a sparse file cost 100 MB or more."""
    rows, bad = [], 0
    tiny = work / "tiny.pt"
    learn(tiny, 1, epochs=1)
    files = []
    for mib in args.sizes:
        path = work / f"valid-{mib}.pt"
        made = _run(untrained_checkpoint_script(path, hidden_for(mib)), work)
        if made.returncode != 0:
            raise SystemExit(made.stderr)
        files.append(("valid", path))
    for gib in args.sparse:
        path = work / f"sparse-{gib}.pt"
        path.write_bytes(tiny.read_bytes())
        os.truncate(path, gib << 30)
        files.append(("sparse", path))
    for kind, path in files:
        got = {}
        for what in ("read", "load"):  # each in its own process
            result = _run(peak_script(path, what), work)
            if result.returncode != 0:
                raise SystemExit(result.stderr[-2000:])
            one = json.loads(result.stdout.strip().splitlines()[-1])
            got[f"{what}_message"], got[f"{what}_growth"] = one["message"], one["growth"]
        size = path.stat().st_size
        row = {
            "file": kind,
            "bytes": size,
            "read_growth_mib": round(got["read_growth"] / MIB, 1),
            "load_growth_mib": round(got["load_growth"] / MIB, 1),
            "refused": got["read_message"] is not None,
        }
        rows.append(row)
        bad += kind == "sparse" and (not row["refused"] or max(got["read_growth"], got["load_growth"]) >= 100e6)
        path.unlink()
    print(f"{'file':8} {'size':>12} {'read (inspect)':>16} {'load (eval)':>14}  outcome")
    for r in rows:
        outcome = "refused" if r["refused"] else "read"
        size = f"{r['bytes'] / MIB:.1f} MiB"
        print(
            f"{r['file']:8} {size:>12} {r['read_growth_mib']:>12.1f} MiB {r['load_growth_mib']:>10.1f} MiB  {outcome}"
        )
    args.memory_summary = {"target": "memory", "files": rows}
    return bad
