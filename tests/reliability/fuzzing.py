"""Mutators for fuzzing the checkpoint loader (used by the test suite and benchmarks/fuzz_loaders.py).

Version 1 (a `torch.save` ZIP; wsn no longer writes it, so mutants start from the golden files of
wsn 0.1.1), three levels: raw bytes of the file; the pickle inside the ZIP (re-zipped with valid
CRCs, so the unpickler and the validators behind it see the damage); and the payload dict (wrong
types, missing keys, other dtypes and shapes, usually with checksums recomputed). Version 2
(safetensors): raw bytes, and structure-aware mutants with checksums recomputed
(tests/reliability/mutate_v2.py). Every mutator takes a `random.Random`, so hypothesis can drive it
through `st.randoms()` and a script through a seed. `exercise` loads a mutant and uses it as the
commands would; only wsn's own errors may come out.
"""

from __future__ import annotations

import copy
import io
import math
import random
import zipfile
from pathlib import Path

import torch

from tests.reliability.payloads import dump_payload, fix_checksums

_HOT = 600  # bytes at each end of a file: ZIP headers, the pickle, the central directory


def _position(rng: random.Random, n: int) -> int:
    if n == 0:
        return 0
    if rng.random() < 0.6:  # most bytes are tensor data guarded by CRCs; aim at the structure
        return rng.randrange(min(n, _HOT)) if rng.random() < 0.5 else max(0, n - 1 - rng.randrange(min(n, _HOT)))
    return rng.randrange(n)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Byte flips, truncation, splices, insertions, deletions, overwrites (1 to 3 of them)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        n = len(buf)
        op = rng.choice(("flip", "flip", "truncate", "splice", "insert", "delete", "overwrite", "zero"))
        i = _position(rng, n)
        if op == "flip" and n:
            buf[min(i, n - 1)] ^= 1 << rng.randrange(8)
        elif op == "truncate":
            del buf[i:]
        elif op == "splice" and n:
            j, k = rng.randrange(n), rng.randint(1, 256)
            buf[i:i] = buf[j : j + k]
        elif op == "insert":
            buf[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        elif op == "delete":
            del buf[i : i + rng.randint(1, 64)]
        elif op == "overwrite":
            k = rng.randint(1, 8)
            buf[i : i + k] = bytes(rng.getrandbits(8) for _ in range(k))
        elif op == "zero":
            k = rng.randint(1, 32)
            buf[i : i + k] = bytes(len(buf[i : i + k]))
    return bytes(buf)


def rezip(data: bytes, change) -> bytes:
    """The checkpoint with change(name, content) applied to each record, re-zipped with valid CRCs."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for info in src.infolist():
            zf.writestr(info.filename, change(info.filename, src.read(info.filename)))
    return out.getvalue()


def mutate_pickle(data: bytes, rng: random.Random) -> bytes:
    """Damage the pickle (data.pkl) or a small record, keeping the ZIP itself valid."""
    target = "data.pkl" if rng.random() < 0.8 else rng.choice(("byteorder", ".format_version", "version", "data/7"))

    def change(name: str, content: bytes) -> bytes:
        return mutate_bytes(content, rng) if name.endswith(target) else content

    return rezip(data, change)


# -- payload level ---------------------------------------------------------------------------------
def _weird(rng: random.Random):
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            1,
            2,
            7,
            2**31,
            2**63,
            -(2**63) - 1,
            10**30,
            0.0,
            -0.0,
            0.5,
            1.5,
            1e308,
            float("nan"),
            float("inf"),
            -float("inf"),
            "",
            "x",
            "wsn",
            "finetune",
            "mlp",
            "conv",
            "split-digits",
            "npz",
            "pmnist",
            "0" * 64,
            "\x00",
            "/nonexistent",
            [],
            [1],
            [64],
            [0],
            [-1],
            [8, 8],
            [65536, 65536],
            ["a"],
            {},
            {"a": 1},
            {"task": 1},
            torch.zeros(2),
            torch.tensor(1),
        ]
    )


def _paths(obj, prefix=()):
    """Every (container path, key) in a nested dict/list, root included."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _parent(obj, path):
    for key in path[:-1]:
        obj = obj[key]
    return obj


_DTYPES = (
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.float32,
)


def _mutate_tensor(t: torch.Tensor, rng: random.Random) -> torch.Tensor:
    op = rng.choice(("dtype", "flatten", "unsqueeze", "slice", "grow", "transpose", "expand", "scalar", "nan", "empty"))
    if t.numel() > 100_000 and op not in ("transpose", "expand", "scalar", "empty"):
        return t  # an expanded view: materialising it would write gigabytes
    if op == "dtype":
        return t.to(rng.choice(_DTYPES))
    if op == "flatten":
        return t.reshape(-1).clone()
    if op == "unsqueeze":
        return t.unsqueeze(0).clone()
    if op == "slice" and t.dim() and t.shape[0] > 1:
        return t[: rng.randrange(1, t.shape[0])].clone()
    if op == "grow" and t.dim():
        return torch.cat([t, t]).clone()
    if op == "transpose" and t.dim() == 2:
        return t.t()
    if op == "expand":
        return t.reshape(-1)[:1].expand(rng.choice((2, 1000, 2**30)))
    if op == "scalar":
        return torch.tensor(rng.random())
    if op == "nan" and t.is_floating_point():
        t = t.clone()
        t.view(-1)[0] = float("nan")
        return t
    if op == "empty":
        return torch.empty(0, dtype=t.dtype)
    return t.clone()


def mutate_payload(payload: dict, rng: random.Random) -> dict:
    """1 to 3 structural changes to a deep copy of `payload`; checksums recomputed 85% of the time."""
    p = copy.deepcopy(payload)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(
            (
                "meta-value",
                "meta-value",
                "meta-value",
                "meta-delete",
                "tensor",
                "tensor",
                "tensor-table",
                "envelope",
                "checksums",
            )
        )
        if kind in ("meta-value", "meta-delete") and isinstance(p.get("meta"), dict):
            paths = _paths(p["meta"])
            if paths:
                path = rng.choice(paths)
                parent = _parent(p["meta"], path)
                if kind == "meta-delete":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = _weird(rng)
        elif kind == "tensor" and isinstance(p.get("tensors"), dict) and p["tensors"]:
            name = rng.choice(sorted(p["tensors"]))
            if isinstance(p["tensors"][name], torch.Tensor):
                p["tensors"][name] = _mutate_tensor(p["tensors"][name], rng)
        elif kind == "tensor-table" and isinstance(p.get("tensors"), dict) and p["tensors"]:
            name = rng.choice(sorted(p["tensors"]))
            op = rng.choice(("delete", "rename", "extra", "replace"))
            if op == "delete":
                del p["tensors"][name]
            elif op == "rename":
                p["tensors"][name.replace("1", "2") if "1" in name else name + "x"] = p["tensors"].pop(name)
            elif op == "extra":
                p["tensors"][rng.choice(("head/9/weight", "mask/3/layers.0", "junk", name + "/x"))] = torch.zeros(
                    rng.randint(0, 9)
                )
            else:
                p["tensors"][name] = _weird(rng)
        elif kind == "envelope":
            key = rng.choice(("format", "version", "meta", "tensors", "checksums"))
            if rng.random() < 0.3:
                p.pop(key, None)
            else:
                p[key] = _weird(rng)
        elif kind == "checksums" and isinstance(p.get("checksums"), dict):
            sums = p["checksums"]
            if rng.random() < 0.5 or not isinstance(sums.get("tensors"), dict) or not sums["tensors"]:
                sums["meta"] = _weird(rng)
            else:
                sums["tensors"][rng.choice(sorted(sums["tensors"], key=str))] = _weird(rng)
    return fix_checksums(p) if rng.random() < 0.85 else p


LEVELS = ("v1-bytes", "v1-pickle", "v1-payload", "v2-bytes", "v2-structure")


def mutated_checkpoint(valid: bytes, payload: dict | None, rng: random.Random, level: str) -> bytes | None:
    """Mutated file bytes at `level` (LEVELS; `valid` is a version-1 file for the v1 levels, with its
    `payload`, a version-2 file for the others); None when torch cannot write the mutant."""
    if level in ("v1-bytes", "v2-bytes"):
        return mutate_bytes(valid, rng)
    if level == "v1-pickle":
        return mutate_pickle(valid, rng)
    if level == "v2-structure":
        from tests.reliability.mutate_v2 import mutate_v2

        return mutate_v2(valid, rng)[1]
    try:
        return dump_payload(mutate_payload(payload, rng))
    except Exception:  # noqa: BLE001 - torch.save refused the mutated object: nothing to load
        return None


def render_inspect(found, path) -> None:
    """`wsn inspect PATH`'s human output and JSON document of a loaded file (null fields included)."""
    import contextlib
    import io

    from wsncli.commands.inspect_file import _render_checkpoint, checkpoint_doc
    from wsncli.engine.usecases.inspect import describe_checkpoint

    doc = checkpoint_doc(describe_checkpoint(found, path))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _render_checkpoint(doc)


def render_eval(report, path) -> None:
    """`wsn eval`'s tables, summary and JSON document of a report."""
    import io

    from rich.console import Console

    from wsncli.commands.evaluate import _matrix_table, _summary, _task_table, eval_doc

    console = Console(file=io.StringIO(), width=200)
    console.print(_task_table(report), _matrix_table(report), _summary(report))
    eval_doc(path, report)


def exercise(path) -> str:
    """exercise_detail's outcome alone: 'loaded' or the refusal's class name."""
    return exercise_detail(path)[0]


def exercise_detail(path, seen: dict | None = None) -> tuple[str, str | None]:
    """Load `path` and, when it loads, use it as every command would: inspect, eval, the checks of
    train-task, pack-masks, and saving it again. Returns ('loaded', None) or (the loader's refusal
    class name, its message). The loader may refuse only with CheckpointError, the commands only
    with a WsnError; anything else propagates (a bug), as does a loaded checkpoint that the writer
    accepts but that cannot be read back. `seen["statuses"]`: eval's task statuses, when it ran."""
    from wsncli.engine.store.checkpoint import build_checkpoint, encode_checkpoint, load_checkpoint
    from wsncli.engine.store.reader import read_checkpoint_bytes, read_checkpoint_file
    from wsncli.engine.usecases.evaluate import capacity_used, evaluate_checkpoint
    from wsncli.engine.usecases.pack import pack_checkpoint_masks
    from wsncli.engine.usecases.request import TaskRequest, check_matches
    from wsncli.errors import CheckpointError, WsnError

    try:
        found = read_checkpoint_file(path)
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        return type(exc).__name__, str(exc)
    if found.masks:
        pack_checkpoint_masks(found, "auto", source="fuzz")
    capacity_used(ckpt)
    try:
        check_matches(ckpt, TaskRequest(ckpt=path, task=5))
    except WsnError:
        pass
    render_inspect(found, path)
    try:  # with the recorded data root, as `wsn eval` does (mutants name long, odd or missing ones)
        root = Path(ckpt.meta.data_root) if ckpt.meta.data_root else None
        report = evaluate_checkpoint(ckpt, None, root, torch.device("cpu"))
        if not all(math.isfinite(t.accuracy) for t in report.tasks):
            raise AssertionError(f"non-finite accuracy in {report.tasks}")
        render_eval(report, path)
        if seen is not None:
            seen["statuses"] = [t.status for t in report.tasks]
    except WsnError:
        pass
    if not ckpt.tampered:  # what was accepted and can be written again is read back
        try:
            raw = encode_checkpoint(ckpt)
        except CheckpointError:  # the writer refuses (e.g. NaN weights): nothing is written
            return "loaded", None
        build_checkpoint(read_checkpoint_bytes(raw))
    return "loaded", None
