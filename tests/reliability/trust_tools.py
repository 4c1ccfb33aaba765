"""Helpers for the trust tests: learn tasks in-process, leave a task's `.resume` snapshot behind as an
interrupted run would, and rewrite a snapshot part by part with its checksums made valid again (as an
editor who knows the checksum rules, but not the key, would)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch

from tests.ckpt_tools import read_parts
from tests.reliability.spec_reader import auth_message, tensor_sha256

HIDDEN = (16,)


class Stop(Exception):
    """Raised from a progress callback: the run ends as a kill between epochs would leave it."""


def request(path: Path, task: int, **kwargs):
    from wsncli.engine.usecases.learn import TaskRequest

    defaults = {"hidden": HIDDEN, "epochs": 4, "device": "cpu"}
    return TaskRequest(ckpt=Path(path), task=task, **{**defaults, **kwargs})


def learn(path: Path, task: int, **kwargs):
    """learn_task in-process, torch's thread count restored after."""
    from wsncli.engine.usecases.learn import learn_task

    threads = torch.get_num_threads()
    try:
        return learn_task(request(path, task, **kwargs))
    finally:
        torch.set_num_threads(threads)


def interrupted(path: Path, task: int, stop_after: int = 2, **kwargs) -> Path:
    """Run `task` into `path` and stop it once epoch `stop_after` is snapshotted; the snapshot's path."""
    from wsncli.engine.training.loop import TrainCallbacks
    from wsncli.engine.usecases.learn import learn_task

    def on_epoch_end(stats) -> None:
        if stats.epoch > stop_after:
            raise Stop

    threads = torch.get_num_threads()
    try:
        learn_task(request(path, task, **kwargs), TrainCallbacks(on_epoch_end=on_epoch_end))
    except Stop:
        pass
    finally:
        torch.set_num_threads(threads)
    snap = Path(path).with_name(Path(path).name + ".resume")
    assert snap.exists()
    return snap


def copy_pair(ckpt: Path, snap: Path, folder: Path) -> tuple[Path, Path]:
    """The checkpoint and its snapshot copied into `folder` under the same names."""
    new_ckpt, new_snap = folder / ckpt.name, folder / snap.name
    shutil.copyfile(ckpt, new_ckpt)
    shutil.copyfile(snap, new_snap)
    return new_ckpt, new_snap


def rewrite_snapshot(
    snap: Path, state=None, identity=None, arrays=None, metadata=None, recompute: bool = True, drop_hmac: bool = True
) -> None:
    """Apply `state(dict)`, `identity(dict)`, `arrays(dict)` or `metadata(dict)` changes (each may
    replace the JSON text instead by returning a str), then write the file back; with `recompute`
    every tensor checksum and (format 2) the whole-file sha256 are made valid again."""
    md, arrs = read_parts(snap)
    arrs = {k: np.array(v) for k, v in arrs.items()}
    for key, change in (("state", state), ("identity", identity)):
        if change is not None:
            value = json.loads(md[key])
            out = change(value)
            md[key] = out if isinstance(out, str) else json.dumps(value, sort_keys=True)
    if arrays is not None:
        arrays(arrs)
    if metadata is not None:
        metadata(md)
    if recompute:  # version 1 of the snapshot hashed a 0-d tensor as shape [1] (wsn 0.2.0)
        old = md.get("version") == "1"
        md["checksums"] = json.dumps(
            {k: tensor_sha256(v, zero_d_as=[1] if old else None) for k, v in arrs.items()},
            sort_keys=True,
            separators=(",", ":"),
        )
        if "sha256" in md:
            fields = {k: v for k, v in md.items() if k not in ("format", "version", "sha256", "hmac")}
            md["sha256"] = hashlib.sha256(auth_message(md["format"], int(md["version"]), fields)).hexdigest()
    if drop_hmac:
        md.pop("hmac", None)
    Path(snap).write_bytes(safetensors.numpy.save(arrs, metadata=md))


# Python code for a fresh process: it reads PATH with read_checkpoint_file (what inspect reads) or
# loads it with load_checkpoint (what eval loads), as WHAT says ("read" or "load"), after resetting its
# peak resident size to the current one (/proc/self/clear_refs: torch's imports are not counted),
# and prints one JSON line: the refusal (or null) and the peak growth in bytes. One measurement per
# process: memory freed by one would be reused by the next without showing.
PEAK_SCRIPT = """
import json, resource, sys
from pathlib import Path
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.store.reader import read_checkpoint_file
from wsncli.errors import WsnError

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = peak()
try:
    (read_checkpoint_file if WHAT == "read" else load_checkpoint)(Path(PATH))
    message = None
except WsnError as exc:
    message = str(exc)
print(json.dumps({"message": message, "growth": peak() - before}))
"""


def peak_script(path: Path, what: str) -> str:
    """PEAK_SCRIPT measuring `what` ("read" or "load") of `path`."""
    return PEAK_SCRIPT.replace("WHAT", repr(what)).replace("PATH", repr(str(path)))


def untrained_checkpoint_script(path: Path, hidden: tuple[int, ...]) -> str:
    """Python code writing a checkpoint of an MLP 64-`hidden` with no task yet (its size: 8 bytes per
    masked weight, weights and scores) to `path`."""
    return (
        "from pathlib import Path\n"
        "from wsncli.engine.nn.models import ModelConfig, build_model\n"
        "from wsncli.engine.store.checkpoint import Checkpoint, encode_checkpoint\n"
        "from wsncli.engine.store.schema import CheckpointMeta, from_model_config\n"
        f"config = ModelConfig('mlp', (64,), {tuple(hidden)!r})\n"
        "meta = CheckpointMeta(benchmark='split-digits', model=from_model_config(config), seed=0, method='wsn')\n"
        f"Path({str(path)!r}).write_bytes(encode_checkpoint(Checkpoint(meta, build_model(config))))\n"
    )
