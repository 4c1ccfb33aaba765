"""Checkpoint size, format version 1 (wsn 0.1) against version 2, for the same learned tasks.

    python benchmarks/checkpoint_sizes.py CKPT [CKPT ...]

For each version-2 checkpoint, the same network, heads, norms and masks are written in the
version-1 layout exactly as wsn 0.1 wrote it (a torch.save archive of the payload, masks as
numpy.packbits per task and layer) and both sizes are printed with the version-2 file's parts.
Version 2 also stores what version 1 did not (each task's transform and its test predictions).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import emit  # noqa: E402

from wsncli.engine.store.checkpoint import load_checkpoint  # noqa: E402
from wsncli.engine.store.container import tensor_digest  # noqa: E402
from wsncli.engine.store.reader import read_checkpoint_file  # noqa: E402
from wsncli.engine.usecases.inspect import describe_checkpoint  # noqa: E402

V2_ONLY = ("preprocess", "digest_version", "accuracy_row", "world_size", "input_dtype")


def version1_bytes(path: Path) -> int:
    """The size of the same content in wsn 0.1's layout (its to_payload + torch.save)."""
    ckpt = load_checkpoint(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in ckpt.model.subnet_layers().items():
        tensors[f"layer/{name}/weight"] = layer.weight.detach().clone()
        tensors[f"layer/{name}/scores"] = layer.scores.detach().clone()
    for key, head in ckpt.model.heads.items():
        for k, v in head.state_dict().items():
            tensors[f"head/{key}/{k}"] = v.clone()
    for key, norms in ckpt.model.task_norms.items():
        for k, v in norms.state_dict().items():
            tensors[f"norm/{key}/{k}"] = v.clone()
    for t, masks in ckpt.masks.items():
        for n, m in masks.items():
            tensors[f"mask/{t}/{n}"] = torch.from_numpy(np.packbits(m.numpy().reshape(-1)))
    meta = msgspec.to_builtins(ckpt.meta)
    meta.pop("layers", None)
    for record in meta["tasks"]:
        for key in V2_ONLY:
            record.pop(key, None)
    payload = {
        "format": "wsn-checkpoint",
        "version": 1,
        "meta": meta,
        "tensors": tensors,
        "checksums": {
            "meta": hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest(),
            "tensors": {k: tensor_digest(v.numpy()) for k, v in tensors.items()},
        },
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return len(buffer.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    args = p.parse_args()
    print(
        f"{'checkpoint':<28} {'tasks':>5} {'v1 bytes':>10} {'v2 bytes':>10} {'v2/v1':>6} {'v2 masks':>9} {'codec':>14}"
    )
    for path in args.checkpoints:
        found = read_checkpoint_file(path)
        desc = describe_checkpoint(found, path)
        v1, v2 = version1_bytes(path), path.stat().st_size
        print(
            f"{path.name:<28} {len(found.meta.tasks):>5} {v1:>10} {v2:>10} {v2 / v1:>6.3f} {found.mask_bytes:>9} "
            f"{found.mask_codec or '-':>14}"
        )
        emit(
            {
                "kind": "checkpoint_size",
                "checkpoint": path.name,
                "tasks": len(found.meta.tasks),
                "v1_bytes": v1,
                "v2_bytes": v2,
                "v2_parts": desc.size,
                "mask_codec": found.mask_codec,
            }
        )


if __name__ == "__main__":
    main()
