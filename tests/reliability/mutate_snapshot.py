"""Structure-aware mutants of `.resume` snapshots (format wsn-snapshot), with the checksums recomputed.

A snapshot is split into its parts (tests/reliability/mutate_v2.py `parse`); one to three mutations
are applied to its `state` (epoch, best epoch and loss, the history's entries: values, types, keys,
lengths), its `identity`, its metadata, its tensors (model, best, optimizer and generator states:
dropped, added, renamed, reshaped, other values) and their header entries, or its raw bytes; then the
file is written again with every tensor checksum and the whole-file sha256 recomputed (90% of the
time), so the checks behind the checksums see the damage. `mutate_snapshot(raw, rng)` takes a
`random.Random`; `exercise_snapshot` resumes a task from a mutant as `train-task` would.
"""

from __future__ import annotations

import copy
import json
import random

from tests.reliability.fuzzing import mutate_bytes
from tests.reliability.mutate_v2 import (
    CONTAINERS,
    NUMBERS,
    RAW_JSON,
    STRINGS,
    V2File,
    _json_or,
    _mutate_entry,
    _mutate_metadata,
    _paths,
    parse,
    serialize,
)

SNAPSHOT_NAMES = ["opt/99/step", "opt/0/exp_avg2", "model/extra", "best/x", "rng/other", "opt/-1/step", "model/"]
EPOCHS = [0, 1, 2, 3, 4, 5, 30, -1, 2**63, 1.5, "2", None, True]


def _weird(rng: random.Random):
    pool = rng.choice((NUMBERS, STRINGS, CONTAINERS, EPOCHS))
    value = copy.deepcopy(rng.choice(pool))
    return f"@RAW:{rng.choice(RAW_JSON)}@" if rng.random() < 0.05 else value


def _dump(value) -> str:
    text = json.dumps(value, sort_keys=True)
    for raw in RAW_JSON:
        text = text.replace(json.dumps(f"@RAW:{raw}@"), raw)
    return text


def _mutate_json(f: V2File, key: str, rng: random.Random) -> None:
    """A value of the `state` or `identity` JSON: changed, removed, added, or the text itself damaged."""
    value = _json_or(f.metadata.get(key), None)
    if not isinstance(value, dict) or rng.random() < 0.1:
        text = str(f.metadata.get(key, ""))
        f.metadata[key] = mutate_bytes(text.encode("utf-8", "surrogatepass"), rng).decode("utf-8", "replace")
        return
    op = rng.choice(("value", "value", "epoch", "history", "delete", "unknown"))
    if op == "epoch" and key == "state":
        value[rng.choice(("epoch", "best_epoch", "best_loss"))] = rng.choice(EPOCHS + [1e308, -0.0])
    elif op == "history" and isinstance(value.get("history"), list) and value["history"]:
        history = value["history"]
        what = rng.choice(("pop", "append", "swap", "entry"))
        if what == "pop":
            history.pop(rng.randrange(len(history)))
        elif what == "append":
            history.append(copy.deepcopy(rng.choice(history)))
        elif what == "swap" and len(history) > 1:
            history[0], history[-1] = history[-1], history[0]
        elif any(isinstance(e, dict) for e in history):
            entry = rng.choice([e for e in history if isinstance(e, dict)])
            name = rng.choice(sorted(map(str, entry)) + ["extra"])
            entry[name] = _weird(rng)
    else:
        paths = _paths(value)
        path = rng.choice(paths) if paths else ("epoch",)
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        if op == "delete" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif op == "unknown":
            value[rng.choice(("extra", "epochs", "lr", ""))] = _weird(rng)
        else:
            parent[path[-1]] = _weird(rng)
    f.metadata[key] = _dump(value)


def _mutate_tensors(f: V2File, rng: random.Random) -> None:
    import numpy as np

    from tests.reliability.mutate_v2 import DTYPES

    i = rng.randrange(len(f.tensors))
    name, dtype, shape, data = f.tensors[i]
    op = rng.choice(("drop", "rename", "add", "cut", "values", "dtype"))
    if op == "drop" and len(f.tensors) > 1:
        f.tensors.pop(i)
    elif op == "rename":
        f.tensors[i][0] = rng.choice(SNAPSHOT_NAMES + [name.replace("0", "1"), name + "x", name.split("/")[0]])
    elif op == "add":
        f.tensors.append([rng.choice(SNAPSHOT_NAMES), "F32", [rng.choice([0, 1, 3])], b""])
        f.tensors[-1][3] = bytes(4 * f.tensors[-1][2][0])
    elif op == "cut" and isinstance(dtype, str) and dtype in DTYPES and data:
        size = np.dtype(DTYPES[dtype]).itemsize
        keep = rng.randrange(len(data) // size)
        f.tensors[i][2], f.tensors[i][3] = [keep], data[: keep * size]
    elif op == "dtype" and dtype == "F32":
        f.tensors[i][1] = "I32"
    elif isinstance(dtype, str) and dtype in DTYPES and data:
        arr = np.frombuffer(data, DTYPES[dtype]).copy()
        k = rng.randrange(len(arr))
        pool = {"u": [0, 1, 255], "i": [0, -1, 2**31 - 1, -(2**31)], "f": [np.nan, np.inf, -1.0, 2.0**20]}
        arr[k] = rng.choice(pool[arr.dtype.kind])
        f.tensors[i][3] = arr.tobytes()


def mutate_snapshot(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    """(kind, mutant) of a valid snapshot: 1 to 3 changes, checksums recomputed 90% of the time."""
    if rng.random() < 0.1:
        return "bytes", mutate_bytes(raw, rng)
    f = parse(raw)
    kinds, entry_edits = [], []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(("state", "state", "state", "identity", "metadata", "tensors", "tensors", "entry"))
        kinds.append(kind)
        if kind in ("state", "identity"):
            _mutate_json(f, kind, rng)
        elif kind == "metadata":
            _mutate_metadata(f, rng)
        elif kind == "tensors":
            _mutate_tensors(f, rng)
        else:
            entry_edits += _mutate_entry(f, rng)
    entry_edits = [e for e in entry_edits if e[0] < len(f.tensors)]
    return "+".join(sorted(set(kinds))), serialize(f, recompute=rng.random() < 0.9, entry_edits=entry_edits)


def exercise_snapshot(ckpt, snap, ckpt_bytes: bytes, mutant: bytes, request) -> tuple[str, str | None]:
    """Resume the task from `mutant` as `train-task` would: ('resumed' or 'restarted', None),
    ('refused', the message) for a one-line TaskError naming the snapshot and --restart, ('diverged',
    the message) when training on its values diverges (nothing is saved), or (another WsnError's
    class name, its message). Anything else propagates: a bug."""
    import torch

    from wsncli.engine.training.loop import TrainingDiverged
    from wsncli.engine.usecases.learn import learn_task
    from wsncli.errors import TaskError, WsnError

    ckpt.write_bytes(ckpt_bytes)
    snap.write_bytes(mutant)
    threads = torch.get_num_threads()
    try:
        result = learn_task(request)
    except TrainingDiverged as exc:  # finite but absurd values (checksums recomputed): one line, nothing saved
        return "diverged", str(exc)
    except TaskError as exc:
        text = str(exc)
        if str(snap) in text and "--restart" in text and "\n" not in text:
            return "refused", text.replace(str(snap), "<snapshot>")
        return type(exc).__name__, text
    except WsnError as exc:
        return type(exc).__name__, str(exc)
    finally:
        torch.set_num_threads(threads)
    return ("resumed" if result.resumed_from_epoch else "restarted"), None
