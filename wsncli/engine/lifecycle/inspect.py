"""What a checkpoint holds: tasks in learning order, per-layer capacity, mask reuse, size breakdown."""

from __future__ import annotations

from pathlib import Path

import torch

from wsncli.engine.lifecycle.evaluate import capacity_used
from wsncli.engine.store.checkpoint import FORMAT_NAME, FORMAT_VERSION, Checkpoint, checkpoint_tensors

_SETTINGS = ("capacity", "epochs", "batch_size", "lr", "seed", "method", "device", "best_epoch", "train_seconds", "learned_at")


def describe_checkpoint(ckpt: Checkpoint, path: Path) -> dict:
    """A plain-data description of the checkpoint (what `wsn inspect` prints)."""
    layers = ckpt.model.subnet_layers()
    learned = ckpt.learned()
    tasks = []
    seen = {n: torch.zeros_like(l.weight, dtype=torch.bool) for n, l in layers.items()}
    for record in ckpt.tasks:
        task = record["task"]
        entry = {"task": task, "order": record["order"], "n_classes": record["n_classes"], "accuracy_at_learning": record["accuracy"]}
        entry.update({k: record.get(k) for k in _SETTINGS})
        masks = ckpt.masks.get(task)
        if masks is not None:
            kept = sum(int(masks[n].sum()) for n in layers)
            reused = sum(int((masks[n] & seen[n]).sum()) for n in layers)
            entry["mask_density"] = kept / sum(l.weight.numel() for l in layers.values())
            entry["reuse_of_earlier"] = reused / kept if kept else 0.0
            entry["new_weights"] = kept - reused
            entry["layers"] = {
                n: {"density": int(masks[n].sum()) / layers[n].weight.numel(), "reused": int((masks[n] & seen[n]).sum())} for n in layers
            }
            for n in layers:
                seen[n] |= masks[n]
        tasks.append(entry)
    union = ckpt.used_weights() if ckpt.masks else None
    layer_rows = []
    for name, layer in layers.items():
        n = layer.weight.numel()
        used = int(union[name].sum()) if union is not None else (n if learned else 0)
        layer_rows.append({"layer": name, "shape": list(layer.weight.shape), "weights": n, "used": used, "free": n - used, "used_fraction": used / n})
    return {
        "path": str(path),
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "benchmark": ckpt.meta["benchmark"],
        "model": ckpt.meta["model"],
        "method": ckpt.meta["method"],
        "seed": ckpt.meta["seed"],
        "wsn_version": ckpt.meta.get("wsn_version"),
        "learned": learned,
        "capacity_used": capacity_used(ckpt),
        "tasks": tasks,
        "layers": layer_rows,
        "size": size_breakdown(ckpt, path),
        "tampered": list(ckpt.tampered),
    }


def size_breakdown(ckpt: Checkpoint, path: Path) -> dict:
    """Bytes per part: tensors by kind (weights, scores, heads, norms, masks) and the file's total."""
    parts = {"weights": 0, "scores": 0, "heads": 0, "norms": 0, "masks": 0}
    for name, tensor in checkpoint_tensors(ckpt).items():
        kind = name.split("/", 1)[0]
        nbytes = tensor.numel() * tensor.element_size()
        if kind == "layer":
            parts["weights" if name.endswith("/weight") else "scores"] += nbytes
        else:
            parts[{"head": "heads", "norm": "norms", "mask": "masks"}[kind]] += nbytes
    file_bytes = Path(path).stat().st_size if Path(path).exists() else None
    parts["file"] = file_bytes
    parts["metadata_and_container"] = file_bytes - sum(v for k, v in parts.items() if k != "file") if file_bytes else None
    return parts
