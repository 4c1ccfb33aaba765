"""Long fuzzing runs of wsn's two file loaders: the checkpoint (`load_checkpoint`) and `.wsnm`
(`formats.unpack`). A mutant may be refused only with wsn's own error (CheckpointError / FormatError,
both WsnError); any other exception, or a load slower than --timeout seconds, is a bug: the script
saves the input under --out and exits 1.

    python benchmarks/fuzz_loaders.py --iterations 20000 [--seed 0] [--target checkpoint|wsnm|snapshot|all]
    python benchmarks/fuzz_loaders.py --target wsnm --iterations 3000 --structure-iterations 3000
    python benchmarks/fuzz_loaders.py --target memory   # peak memory per file size, no fuzzing

Checkpoint mutants come at three levels (tests/reliability/fuzzing.py): raw bytes, the pickle inside a
re-zipped valid ZIP, and the payload dict with checksums recomputed. `.wsnm` mutants are byte-level
mutations of packed masks of every codec (--iterations of them), then structure-aware ones
(tests/formats/mutators.py: header fields, task counts, the stream table, every CRC resealed;
--structure-iterations). The `.wsnm` campaign reports refusals by message class, accepted mutants,
hangs (a decode over --wsnm-timeout s), peak RSS growth (flagged above --max-rss-growth MiB) and
tracebacks (anything but FormatError; an accepted file must also pack() back), as a table and one
final JSON line; it fails on any hang, memory flag or traceback. The test suite runs the same
mutators for ~1000 examples.

Snapshot mutants (`--target snapshot`, tests/reliability/mutate_snapshot.py: the state, identity,
metadata, tensors and entries of a `.resume`, checksums recomputed; --structure-iterations of them,
plus --iterations byte-level ones) are resumed as `train-task` would: a task resumes, or the snapshot
is refused with one line naming it and `--restart`; anything else is a bug. `--target memory` writes
valid checkpoints of growing size and sparse files of 1 and 8 GiB, and reports, per file, the peak
memory growth of reading it (inspect) and loading it (eval), each in a fresh process.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reliability.fuzzing import exercise_detail, mutate_bytes, mutated_checkpoint  # noqa: E402
from tests.reliability.payloads import load_payload, make_tiny_checkpoint  # noqa: E402
from wsncli.errors import WsnError  # noqa: E402


class Hang(Exception):
    """A single load took longer than --timeout."""


_ARMED = [True]  # the .wsnm campaign disarms the alarm before cancelling it


def _alarm(_signum, _frame):
    if _ARMED[0]:
        raise Hang


def _wsnm_samples(ckpt_path: Path) -> list[bytes]:
    """Valid .wsnm files of the tiny checkpoint, one per codec."""
    import formats
    from wsncli.engine.store.reader import read_checkpoint_file
    from wsncli.engine.usecases.pack import pack_checkpoint_masks

    ckpt = read_checkpoint_file(ckpt_path)
    samples = []
    for codec in formats.CODECS:
        try:
            samples.append(pack_checkpoint_masks(ckpt, codec, source="fuzz").data)
        except WsnError as exc:
            raise SystemExit(f"cannot pack the sample checkpoint with {codec}: {exc}") from None
    return samples


class Unwritable(Exception):
    """unpack accepted a file that pack cannot write back (a reader/writer mismatch: a bug)."""


def _decode(data: bytes, max_bits: int) -> tuple[str, str | None]:
    """("accepted", None) or ("refused", the FormatError message): unpack, describe, and for an
    accepted file pack() of what was read plus json.dumps of describe() (both must work)."""
    import formats

    try:
        packed = formats.unpack(data, max_bits=max_bits)
        info = formats.describe(data, max_bits=max_bits)
    except formats.FormatError as exc:
        return "refused", str(exc)
    json.dumps(info, allow_nan=False)
    try:
        formats.pack(packed.layers, packed.task_ids, packed.codec, packed.meta)
    except formats.FormatError as exc:
        raise Unwritable(f"accepted, but pack() refuses it: {exc}") from None
    return "accepted", None


def _message_class(message: str) -> str:
    """The first words of a refusal, with the stream label, quoted values, lists and numbers blanked."""
    text = re.sub(r"^stream \d+ \(.*?\)(, context \d)?:? ?", "stream: ", message)
    text = re.sub(r"'(?:[^'\\]|\\.)*'|\[[^\]]*\]", "", text)
    text = re.sub(r"0x[0-9a-f]+", "HEX", text)
    text = re.sub(r"(?<![A-Za-z\d-])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", "N", text)
    return " ".join(text.split()[:6])


def _top(counter: collections.Counter, n: int) -> dict[str, int]:
    """The n most common entries, the rest summed under "(other)"."""
    top = dict(counter.most_common(n))
    rest = sum(counter.values()) - sum(top.values())
    return {**top, "(other)": rest} if rest else top


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _save(args: argparse.Namespace, name: str, data: bytes) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / name
    path.write_bytes(data)
    return path


def wsnm_campaign(args: argparse.Namespace, samples: list[bytes]) -> int:
    """Byte-level then structure-aware `.wsnm` mutants; returns the number of bugs (hangs, memory, tracebacks)."""
    from tests.formats.mutators import mutate_structure, sample_files

    samples = samples + sample_files(args.seed)
    rng = random.Random(args.seed)
    levels = ["bytes"] * args.iterations + ["structure"] * args.structure_iterations
    refusals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    bugs = {"hang": 0, "memory": 0, "traceback": 0}
    rss_start = _max_rss_mib()
    growth = slowest = 0.0
    start = time.perf_counter()
    for i, level in enumerate(levels):
        if level == "bytes":
            kind, mutant = "bytes", mutate_bytes(rng.choice(samples), rng)
        else:
            kind, mutant = mutate_structure(rng.choice(samples), rng)
        t0 = time.perf_counter()
        try:
            _ARMED[0] = True
            signal.setitimer(signal.ITIMER_REAL, args.wsnm_timeout)
            outcome, message = _decode(mutant, args.max_bits)
        except Hang:
            outcome, message = "hang", None
        except Exception:  # noqa: BLE001 - anything but a FormatError is what we hunt
            outcome, message = "traceback", traceback.format_exc().strip().splitlines()[-1][:160]
        finally:
            _ARMED[0] = False  # a late alarm is then ignored (the elapsed time still counts)
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        if outcome != "hang" and seconds > args.wsnm_timeout:
            outcome = "hang"
        counts[f"{level}: {outcome}"] += 1
        if outcome == "refused":
            refusals[_message_class(message)] += 1
        new_growth = _max_rss_mib() - rss_start
        if new_growth > args.max_rss_growth and not bugs["memory"]:  # ru_maxrss only grows: flag once
            bugs["memory"] += 1
            saved = _save(args, f"wsnm-memory-{args.seed}-{i}.bin", mutant)
            print(f"wsnm #{i} ({kind}): peak RSS grew by {new_growth:.0f} MiB -> {saved}")
        growth = max(growth, new_growth)
        if outcome in ("hang", "traceback"):
            bugs[outcome] += 1
            saved = _save(args, f"wsnm-{outcome}-{args.seed}-{i}.bin", mutant)
            print(f"wsnm #{i} ({kind}): {outcome} {message or f'{seconds:.1f} s'} -> {saved}")
    summary = {
        "target": "wsnm",
        "seed": args.seed,
        "mutants": len(levels),
        "byte_level": args.iterations,
        "structure_aware": args.structure_iterations,
        "max_bits": args.max_bits,
        "accepted": sum(n for k, n in counts.items() if k.endswith(": accepted")),
        "refused": sum(refusals.values()),
        "refusal_classes": _top(refusals, 10),
        "refusal_class_count": len(refusals),
        "hangs": bugs["hang"],
        "tracebacks": bugs["traceback"],
        "peak_rss_growth_mib": round(growth, 1),
        "memory_flag": bugs["memory"] > 0,
        "seconds": round(time.perf_counter() - start, 1),
        "slowest_ms": round(1000 * slowest),
    }
    _print_summary("wsnm", summary, args, counts, refusals, growth)
    args.summary = summary
    return sum(bugs.values())


def _print_summary(
    target: str, summary: dict, args, counts: collections.Counter, refusals: collections.Counter, growth: float
) -> None:
    """The table of one target's outcomes: counts per outcome, RSS growth, top refusal classes."""
    print(
        f"{target}: {summary['mutants']} mutants ({args.iterations} byte-level, {args.structure_iterations} "
        f"structure-aware) in {summary['seconds']} s (slowest {summary['slowest_ms']} ms)"
    )
    for key, n in sorted(counts.items()):
        print(f"  {n:7d}  {key}")
    print(f"  {'':7}  peak RSS growth {growth:.1f} MiB (flag above {args.max_rss_growth:.0f})")
    print("  refusals by message class (top 12):")
    for key, n in refusals.most_common(12):
        print(f"  {n:7d}  {key}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", "-n", type=int, default=5000, help="mutants per target (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=("checkpoint", "wsnm", "snapshot", "memory", "all"), default="all")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds one checkpoint load (and its use) may take")
    parser.add_argument(
        "--structure-iterations",
        type=int,
        default=None,
        help="structure-aware mutants after the byte-level ones, per target (default: --iterations)",
    )
    parser.add_argument("--wsnm-timeout", type=float, default=5.0, help="seconds one .wsnm decode may take")
    parser.add_argument(
        "--max-bits",
        type=int,
        default=1 << 24,
        help="decoded-size limit given to unpack (a valid tiny stream may decode to this many bits)",
    )
    parser.add_argument("--max-rss-growth", type=float, default=256.0, help="MiB of peak RSS growth that is a bug")
    parser.add_argument(
        "--sizes",
        type=lambda t: [int(v) for v in t.split(",") if v],
        default=[1, 16, 64, 256],
        help="--target memory: MiB",
    )
    parser.add_argument(
        "--sparse", type=lambda t: [int(v) for v in t.split(",")], default=[1, 8], help="--target memory: GiB"
    )
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="where failing inputs are saved")
    args = parser.parse_args()
    if args.structure_iterations is None:
        args.structure_iterations = args.iterations
    args.summary = None
    with tempfile.TemporaryDirectory(prefix="wsn-fuzz-") as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    valid_path = make_tiny_checkpoint(work / "tiny.pt") if args.target != "memory" else None
    signal.signal(signal.SIGALRM, _alarm)
    failures = 0
    args.checkpoint_summary = None
    if args.target in ("checkpoint", "all"):
        failures += checkpoint_campaign(args, _checkpoint_samples(valid_path, work), work)
    wsnm = _wsnm_samples(valid_path) if args.target in ("wsnm", "all") else []
    if wsnm:
        failures += wsnm_campaign(args, wsnm)
    args.snapshot_summary = args.memory_summary = None
    if args.target in ("snapshot", "all"):
        from fuzz_snapshots import snapshot_campaign

        failures += snapshot_campaign(args, work)
    if args.target == "memory":
        from fuzz_snapshots import memory_table

        failures += memory_table(args, work)
    print("no bugs found" if not failures else f"{failures} bug(s) found; inputs in {args.out}")
    for summary in (args.checkpoint_summary, args.summary, args.snapshot_summary, args.memory_summary):
        if summary is not None:
            print(json.dumps(summary))
    return 1 if failures else 0


# -- checkpoints ----------------------------------------------------------------------------------------
BYTE_LEVELS = ("v1-bytes", "v2-bytes")
STRUCTURE_LEVELS = (
    "v2-structure",
    "v2-structure",
    "v1-payload",
    "v1-pickle",
)  # half the structure-aware mutants are v2


def _checkpoint_samples(tiny: Path, work: Path) -> dict[str, list[tuple[bytes, dict | None]]]:
    """Valid files to mutate: version 1, the golden files of wsn 0.1.1 (wsn writes version 2 only),
    with their payloads; version 2, a wsn and a finetune checkpoint written here."""
    from tests.reliability.payloads import GOLDEN_V1, golden_v1
    from wsncli.engine.usecases.learn import TaskRequest, learn_task

    finetune = work / "finetune.pt"
    for task in (1, 2):
        learn_task(TaskRequest(ckpt=finetune, task=task, hidden=(8,), epochs=1, device="cpu", method="finetune"))
    v1 = [golden_v1(p.name) for p in sorted(GOLDEN_V1.glob("v1-*.pt"))]
    return {
        "v1": [(raw, load_payload(raw)) for raw in v1],
        "v2": [(tiny.read_bytes(), None), (finetune.read_bytes(), None)],
    }


def _refusal_class(message: str, path: Path) -> str:
    """The first words of a refusal, without the file name, quoted values, lists and numbers."""
    text = message.removeprefix(f"{path}: ")
    text = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|\[[^\]]*\]|\([^)]*\)", "", text)
    text = re.sub(r"(?<![A-Za-z\d-])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", "N", text)
    return " ".join(text.split()[:7])


def _verdicts(valid: bytes, mutant: bytes, statuses: list[str]) -> list[str]:
    """eval's status of each task of a loaded wsn mutant, named by how the mutant differs from its
    file: its tensors changed, or only its records, the task's record digest failing or holding
    (recomputed by the mutator). A failing record digest must always give `record-changed`."""
    from tests.reliability.mutate_v2 import parse
    from tests.reliability.spec_reader import record_digest

    a, b = parse(valid), parse(mutant)
    meta = json.loads(b.metadata["meta"])
    if meta.get("method") != "wsn":
        return []  # the finetune baseline forgets by design: `changed` is its right answer
    tensors = [sorted((t[0], str(t[1]), str(t[2]), t[3]) for t in f.tensors) for f in (a, b)]
    if tensors[0] != tensors[1]:
        return [f"tensors changed: {s}" for s in statuses]
    holds = [r.get("record_digest") == record_digest(meta, r) for r in meta["tasks"]]
    return [f"record-only, digest {'holds' if h else 'fails'}: {s}" for h, s in zip(holds, statuses)]


def checkpoint_campaign(args: argparse.Namespace, samples: dict, work: Path) -> int:
    """Byte-level (--iterations) then structure-aware (--structure-iterations) mutants of version-1
    and version-2 checkpoints, each loaded and, when accepted, used as every command would
    (tests/reliability/fuzzing.py `exercise_detail`). Counts refusals by class, accepted mutants,
    hangs (over --timeout s), peak RSS growth (flagged above --max-rss-growth MiB) and tracebacks
    (anything but CheckpointError from the loader, or WsnError from the commands); prints a table and
    sets args.checkpoint_summary (one JSON line). Returns the number of bugs."""
    rng = random.Random(args.seed)
    levels = [BYTE_LEVELS[i % 2] for i in range(args.iterations)]
    levels += [STRUCTURE_LEVELS[i % len(STRUCTURE_LEVELS)] for i in range(args.structure_iterations)]
    counts: collections.Counter = collections.Counter()
    refusals: collections.Counter = collections.Counter()
    verdicts: collections.Counter = collections.Counter()
    bugs = {"hang": 0, "memory": 0, "traceback": 0}
    rss_start = _max_rss_mib()
    growth = slowest = 0.0
    path = work / "mutant.pt"
    start = time.perf_counter()
    for i, level in enumerate(levels):
        valid, payload = rng.choice(samples[level[:2]])
        mutant = mutated_checkpoint(valid, payload, rng, level)
        if mutant is None:
            counts[f"{level}: unwritable"] += 1  # torch.save refused the mutated payload: nothing to load
            continue
        path.write_bytes(mutant)
        message = None
        t0 = time.perf_counter()
        try:
            _ARMED[0] = True
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            seen: dict = {}
            outcome, message = exercise_detail(path, seen)
            outcome = "accepted" if outcome == "loaded" else "refused"
            if level == "v2-structure" and "statuses" in seen:
                verdicts.update(_verdicts(valid, mutant, seen["statuses"]))
        except Hang:
            outcome = "hang"
        except Exception:  # noqa: BLE001 - anything but wsn's own errors is what we hunt
            outcome, message = "traceback", traceback.format_exc().strip().splitlines()[-1][:160]
        finally:
            _ARMED[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        if outcome != "hang" and seconds > args.timeout:
            outcome = "hang"
        counts[f"{level}: {outcome}"] += 1
        if outcome == "refused":
            refusals[_refusal_class(message, path)] += 1
        new_growth = _max_rss_mib() - rss_start
        if new_growth > args.max_rss_growth and not bugs["memory"]:  # ru_maxrss only grows: flag once
            bugs["memory"] += 1
            saved = _save(args, f"checkpoint-memory-{args.seed}-{i}.bin", mutant)
            print(f"checkpoint #{i} ({level}): peak RSS grew by {new_growth:.0f} MiB -> {saved}")
        growth = max(growth, new_growth)
        if outcome in ("hang", "traceback"):
            bugs[outcome] += 1
            saved = _save(args, f"checkpoint-{outcome}-{args.seed}-{i}.bin", mutant)
            print(f"checkpoint #{i} ({level}): {outcome} {message or f'{seconds:.1f} s'} -> {saved}")
    by_level = {
        level: {k.split(": ")[1]: n for k, n in counts.items() if k.startswith(level + ":")}
        for level in dict.fromkeys(levels)
    }
    summary = {
        "target": "checkpoint",
        "seed": args.seed,
        "mutants": len(levels),
        "byte_level": args.iterations,
        "structure_aware": args.structure_iterations,
        "by_level": by_level,
        "accepted": sum(n for k, n in counts.items() if k.endswith(": accepted")),
        "refused": sum(refusals.values()),
        "unwritable": sum(n for k, n in counts.items() if k.endswith(": unwritable")),
        "refusal_classes": _top(refusals, 10),
        "refusal_class_count": len(refusals),
        "v2_eval_verdicts": dict(sorted(verdicts.items())),
        "hangs": bugs["hang"],
        "tracebacks": bugs["traceback"],
        "peak_rss_growth_mib": round(growth, 1),
        "memory_flag": bugs["memory"] > 0,
        "seconds": round(time.perf_counter() - start, 1),
        "slowest_ms": round(1000 * slowest),
    }
    bad = sum(n for k, n in verdicts.items() if "digest fails" in k and not k.endswith(": record-changed"))
    if bad:  # a record edit that the record digest sees is a damaged record, never forgetting or proven
        bugs["traceback"] += bad
        print(f"checkpoint: {bad} task(s) with a failing record digest were not called `record-changed`")
    _print_summary("checkpoint", summary, args, counts, refusals, growth)
    args.checkpoint_summary = summary
    return sum(bugs.values())


if __name__ == "__main__":
    sys.exit(main())
