"""Where and how torch runs: device choice and the CPU thread count to use (the caller sets it: the
engine never changes a process-wide setting)."""

from __future__ import annotations

import torch

from wsncli.errors import DeviceError, UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        return torch.device("cuda")
    raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")


SMALL_MODEL_WEIGHTS = 2_000_000


def choose_threads(n_weights: int, threads: int | None) -> int:
    """CPU threads for torch: as asked, else 1 for small models (thread hand-offs cost more than
    they save there, and hurt badly on a busy machine), else torch's current count."""
    if threads is None:
        threads = 1 if n_weights < SMALL_MODEL_WEIGHTS else torch.get_num_threads()
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    return threads
