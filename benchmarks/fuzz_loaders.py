"""Long fuzzing runs of wsn's two file loaders: the checkpoint (`load_checkpoint`) and `.wsnm`
(`formats.unpack`). A mutant may be refused only with wsn's own error (CheckpointError / FormatError,
both WsnError); any other exception, or a load slower than --timeout seconds, is a bug: the script
saves the input under --out and exits 1.

    python benchmarks/fuzz_loaders.py --iterations 20000 [--seed 0] [--target checkpoint|wsnm|all]

Checkpoint mutants come at three levels (tests/reliability/fuzzing.py): raw bytes, the pickle inside a
re-zipped valid ZIP, and the payload dict with checksums recomputed. `.wsnm` mutants are byte-level
mutations of packed masks of every codec. The test suite runs the same mutators for ~1000 examples.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reliability.fuzzing import exercise, mutate_bytes, mutated_checkpoint  # noqa: E402
from tests.reliability.payloads import load_payload, make_tiny_checkpoint  # noqa: E402
from wsncli.errors import WsnError  # noqa: E402


class Hang(Exception):
    """A single load took longer than --timeout."""


def _alarm(_signum, _frame):
    raise Hang


def _wsnm_samples(ckpt_path: Path) -> list[bytes]:
    """Valid .wsnm files of the tiny checkpoint, one per codec; [] when formats is not there yet."""
    try:
        import formats
        from wsncli.engine.lifecycle.pack import pack_checkpoint_masks
        from wsncli.engine.store.checkpoint import load_checkpoint
    except ImportError as exc:
        print(f"skipping .wsnm: {exc}")
        return []
    ckpt = load_checkpoint(ckpt_path)
    samples = []
    for codec in formats.CODECS:
        try:
            samples.append(pack_checkpoint_masks(ckpt, codec, source="fuzz").data)
        except WsnError as exc:
            print(f"skipping codec {codec}: {exc}")
    return samples


def _unpack(data: bytes) -> str:
    import formats

    try:
        formats.unpack(data)
    except formats.FormatError:
        return "FormatError"
    try:
        formats.describe(data)
    except formats.FormatError:
        return "FormatError (describe)"
    return "loaded"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", "-n", type=int, default=5000, help="mutants per target (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=("checkpoint", "wsnm", "all"), default="all")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds one load may take")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="where failing inputs are saved")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wsn-fuzz-") as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    valid_path = make_tiny_checkpoint(work / "tiny.pt")
    valid = valid_path.read_bytes()
    payload = load_payload(valid)
    targets = []
    if args.target in ("checkpoint", "all"):
        targets.append("checkpoint")
    wsnm = _wsnm_samples(valid_path) if args.target in ("wsnm", "all") else []
    if wsnm:
        targets.append("wsnm")
    signal.signal(signal.SIGALRM, _alarm)
    failures = 0
    for target in targets:
        rng = random.Random(args.seed)
        counts: collections.Counter = collections.Counter()
        start = time.perf_counter()
        slowest = 0.0
        for i in range(args.iterations):
            if target == "checkpoint":
                level = ("bytes", "pickle", "payload")[i % 3]
                mutant = mutated_checkpoint(valid, payload, rng, level)
                if mutant is None:
                    counts["unwritable"] += 1
                    continue
            else:
                level = "bytes"
                mutant = mutate_bytes(rng.choice(wsnm), rng)
            path = work / "mutant"
            path.write_bytes(mutant)
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            try:
                outcome = exercise(path) if target == "checkpoint" else _unpack(mutant)
            except Hang:
                outcome = "BUG: hang"
            except Exception:  # noqa: BLE001 - anything but a WsnError is what we hunt
                outcome = "BUG: " + traceback.format_exc().strip().splitlines()[-1][:120]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - t0)
            counts[f"{level}: {outcome}"] += 1
            if outcome.startswith("BUG"):
                failures += 1
                args.out.mkdir(parents=True, exist_ok=True)
                saved = args.out / f"{target}-{args.seed}-{i}.bin"
                saved.write_bytes(mutant)
                print(f"{target} #{i} ({level}): {outcome} -> {saved}")
        seconds = time.perf_counter() - start
        print(f"{target}: {args.iterations} mutants in {seconds:.1f} s (slowest {slowest * 1000:.0f} ms)")
        for key, n in sorted(counts.items()):
            print(f"  {n:7d}  {key}")
    print("no bugs found" if not failures else f"{failures} bug(s) found; inputs in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
