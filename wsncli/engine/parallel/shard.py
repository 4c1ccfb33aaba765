"""Data-parallel training of one task over several processes (torchrun + DistributedDataParallel).

Every process loads the same checkpoint and data and draws the same shuffled order; each takes its
contiguous part of every batch, so the global batch stays `--batch-size`. A part may be empty (a
batch smaller than the number of processes): it contributes zero loss and zero samples, and its
process still runs backward, so DDP's all-reduce always matches. Gradients of the weights, scores
and the task's head are all-reduced by DDP (heads of other tasks, scores of the dense baseline and
all buffers are not DDP parameters, so nothing unused is reduced or broadcast). Every process then
holds the same scores and selects the same mask; at the end the processes compare a digest of their
masks and weights and refuse to save on any mismatch. BatchNorm normalises with the global batch's
statistics: torch's SyncBatchNorm on CUDA, `parallel.batchnorm` on the CPU. Only the global rank 0
takes the lock and writes; how failures and signals end every process alike is `parallel.failure`.
Backends: gloo on the CPU, nccl on CUDA; the processes may run on several machines (c10d rendezvous).
"""

from __future__ import annotations

import gc
import hashlib
import os
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from wsncli.engine.parallel import batchnorm
from wsncli.engine.parallel.failure import Agreement
from wsncli.errors import DeviceError, WsnError

TIMEOUT = timedelta(minutes=30)
T = TypeVar("T")


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
        self.agreement = Agreement(self.rank)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=TIMEOUT, **self._attempt_store())
        self.agreement.attach()
        self.batch_size = 0  # the global batch being trained on (set by `part`)
        self._norms: tuple[nn.Module, str, nn.Module] | None = None
        self._ddp: nn.Module | None = None

    def _attempt_store(self) -> dict:
        """torchrun's restarts (--max-restarts) reuse its key-value store, and torch does not separate the
        attempts' keys: a restarted process could read the address a killed one published and wait for
        it until the timeout. So each attempt's group keeps its keys under its own prefix."""
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            return {}  # not torchrun: torch's env:// initialisation as it is
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world, is_master=False, timeout=TIMEOUT
        )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return {"store": dist.PrefixStore(f"wsn/attempt-{attempt}", store), "rank": self.rank, "world_size": self.world}

    @property
    def is_main(self) -> bool:
        """The global rank 0: the one process that locks, reads the snapshot and writes."""
        return self.rank == 0

    # -- training -------------------------------------------------------------------------------
    def wrap(self, model: nn.Module, task: int, params: list[nn.Parameter]) -> nn.Module:
        """A DDP module over `model` for `task` whose only reduced parameters are `params`."""
        key = str(task)
        if key in model.task_norms:
            original = model.task_norms[key]
            if self.device.type == "cuda":
                model.task_norms[key] = nn.SyncBatchNorm.convert_sync_batchnorm(original)
            else:
                model.task_norms[key] = batchnorm.convert(original, self)
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
                if a.data_ptr() != b.data_ptr():  # SyncBatchNorm may hold copies; GroupBatchNorm shares them
                    a.copy_(b)
        model.task_norms[key] = original
        self._norms = None

    def part_bounds(self, n: int, rank: int) -> tuple[int, int]:
        """[lo, hi) of `rank`'s contiguous part of a batch of n (empty when n < world for some ranks)."""
        return n * rank // self.world, n * (rank + 1) // self.world

    def part_sizes(self, n: int) -> list[int]:
        """Every process's number of samples of a batch of n."""
        return [hi - lo for lo, hi in (self.part_bounds(n, r) for r in range(self.world))]

    def part(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This process's contiguous part of a batch (possibly empty), and where it starts."""
        self.batch_size = x.shape[0]
        lo, hi = self.part_bounds(self.batch_size, self.rank)
        return x[lo:hi], y[lo:hi], lo

    def step(self, forward, optimizer, task: int, draw, xb: torch.Tensor, yb: torch.Tensor):
        """One optimizer step on this process's part of a global batch of n, which may be empty; returns
        the part's (summed loss, correct). The part's loss is its summed loss x world / n, so DDP's average
        of the processes' gradients is the gradient of the mean loss over the whole batch; an empty part
        adds zero loss and zero samples, and its process still runs backward (DDP's all-reduce matches).
        `draw` (nn.dropout) learns where the part starts, so dropout applies the global batch's masks."""
        n = xb.shape[0]
        xb, yb, draw.start = self.part(xb, yb)
        logits = forward(xb, task)  # (b, n_classes), b >= 0
        loss_sum = F.cross_entropy(logits, yb, reduction="sum")  # 0 for an empty part
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * (self.world / n)).backward()
        optimizer.step()
        return loss_sum.detach(), (logits.detach().argmax(1) == yb).sum()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        dist.all_reduce(out)
        return out

    def share(self, work: Callable[[], T]) -> T:
        """Rank 0 runs `work` and every process gets its result (one broadcast: the processes agree on
        it before going on). If it raises on rank 0, the others learn the failure (parallel.failure)."""
        payload = [work() if self.is_main else None]
        dist.broadcast_object_list(payload, src=0)
        return payload[0]

    # -- agreement ---------------------------------------------------------------------------------
    def fail(self, error: BaseException) -> WsnError:
        """The failure every process reports for `error` (this process's, or the first of another's)."""
        return self.agreement.fail(error)

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
