"""Data-parallel training of one task over several processes (torchrun + DistributedDataParallel).

Every process loads the same checkpoint and data and draws the same shuffled order; each takes its
contiguous part of every batch, so the global batch stays `--batch-size`. Gradients of the weights,
scores and the task's head are all-reduced by DDP (heads of other tasks, scores of the dense
baseline and all buffers are not DDP parameters, so nothing unused is reduced or broadcast). Every
process then holds the same scores and selects the same mask; at the end the processes compare a
digest of their masks and weights and refuse to save on any mismatch. Only rank 0 takes the lock
and writes the checkpoint; the others wait for it, and every process exits with the same code.
Backends: gloo on the CPU, nccl on CUDA. BatchNorm archs need CUDA (SyncBatchNorm) for several processes.
"""

from __future__ import annotations

import gc
import hashlib
import os
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from wsncli.errors import DeviceError, WsnError

TIMEOUT = timedelta(minutes=30)


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class _TaskForward(nn.Module):
    """The network as DDP sees it: forward(x) -> task's logits."""

    def __init__(self, model: nn.Module, task: int) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor, _task: int | None = None) -> torch.Tensor:
        return self.model(x, self.task)


class Shard:
    """This process's place in the group, and the collectives training needs."""

    def __init__(self, device: torch.device) -> None:
        self.world = world_size_from_env()
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise DeviceError(
                    f"rank {self.rank} needs GPU {self.local_rank}, but only {torch.cuda.device_count()} are visible"
                )
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = device
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", timeout=TIMEOUT)
        self._norms: tuple[nn.Module, str, nn.Module] | None = None
        self._ddp: nn.Module | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- training -------------------------------------------------------------------------------
    def wrap(self, model: nn.Module, task: int, params: list[nn.Parameter]) -> nn.Module:
        """A DDP module over `model` for `task` whose only reduced parameters are `params`."""
        key = str(task)
        if key in model.task_norms:
            if self.device.type != "cuda":
                raise DeviceError(
                    "BatchNorm networks (conv, resnet18) train in several processes only on CUDA (SyncBatchNorm); "
                    "train them in one process on the CPU"
                )
            original = model.task_norms[key]
            model.task_norms[key] = nn.SyncBatchNorm.convert_sync_batchnorm(original)
            self._norms = (model, key, original)
        forward = _TaskForward(model, task)
        keep = {id(p) for p in params}
        ignore = [f"model.{n}" for n, p in model.named_parameters() if id(p) not in keep]
        ignore += [f"model.{n}" for n, _ in model.named_buffers()]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(forward, ignore)
        ids = None if self.device.type != "cuda" else [self.device.index]
        with warnings.catch_warnings():  # newer torch renames broadcast_buffers; every buffer is ignored above anyway
            warnings.simplefilter("ignore", FutureWarning)
            self._ddp = nn.parallel.DistributedDataParallel(
                forward, device_ids=ids, broadcast_buffers=False, find_unused_parameters=False
            )
        return self._ddp

    def unwrap(self) -> None:
        """Drop the DDP wrapper; put the task's plain BatchNorm back, holding the synchronised statistics."""
        self._ddp = None
        gc.collect()  # the reducer must be gone before the process group is
        if self._norms is None:
            return
        model, key, original = self._norms
        synced = model.task_norms[key]
        with torch.no_grad():
            for (_, a), (_, b) in zip(original.named_buffers(), synced.named_buffers()):
                a.copy_(b)
        model.task_norms[key] = original
        self._norms = None

    def part(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This process's contiguous part of a batch, and the loss scale that makes DDP's average of
        the parts' gradients the gradient of the mean loss over the whole batch."""
        n = x.shape[0]
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return x[lo:hi], y[lo:hi], self.world * (hi - lo) / n

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        dist.all_reduce(out)
        return out

    # -- agreement ---------------------------------------------------------------------------------
    def agree(self, error: WsnError | None) -> None:
        """Every process reports how its last phase ended; if any failed, every process raises (the
        first failure's message, with its rank), so all of them exit with the same code."""
        failures: list = [None] * self.world
        dist.all_gather_object(failures, None if error is None else (type(error).__name__, str(error), error.exit_code))
        first = next(((r, f) for r, f in enumerate(failures) if f is not None), None)
        if first is None:
            return
        if error is not None:
            raise error
        rank, (_kind, message, code) = first
        failure = WsnError(f"rank {rank} failed: {message}")
        failure.exit_code = code
        raise failure

    def check_same_state(self, model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
        """Refuse to go on unless every process holds bit-identical weights, scores and masks."""
        h = hashlib.sha256()
        for name, layer in model.subnet_layers().items():
            h.update(layer.weight.detach().cpu().numpy().tobytes() + layer.scores.detach().cpu().numpy().tobytes())
            if masks is not None:
                h.update(masks[name].cpu().numpy().tobytes())
        digests: list = [None] * self.world
        dist.all_gather_object(digests, h.hexdigest())
        if len(set(digests)) != 1:
            raise WsnError(
                f"the {self.world} processes ended with different weights or masks ({len(set(digests))} "
                "versions); nothing was saved"
            )

    def barrier(self) -> None:
        dist.barrier()

    def close(self, clean: bool = True) -> None:
        """Leave the group; after a failure no barrier (the others may be gone)."""
        self._ddp = None
        gc.collect()
        if dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()
