"""`Learner`: WSN around a user's own masked network, loop, optimizer and data loader.

    learner = Learner(masked(net), capacity=0.5)
    with learner.learning(1):          # selection on; weights earlier tasks use are frozen
        for x, y in loader: ...        # the user's own loop and optimizer
    with learner.using(1) as net:      # exactly task 1's function
        net(x)

Forget-free by construction: inside `learning(t)` every value an earlier task depends on (the
weights its mask keeps, its own biases and BatchNorm, the layers left shared once the first task
has trained them) is put back before every forward pass and when the context ends, so no optimizer
(momentum, weight decay, Adam's state) can move it; the end of the context checks it bit for bit.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from wsncli.engine.nn.masking import masking_report, set_task, shared_parameters, task_parts
from wsncli.engine.nn.selection import k_for_capacity
from wsncli.engine.nn.subnet import SubnetLayer
from wsncli.errors import FieldError, ForgettingDetected, TaskError, UsageError


@dataclass(frozen=True)
class LayerUse:
    """One masked layer's accounting: weights, those some task keeps, and each task's kept count."""

    weights: int
    used: int
    kept: dict[int, int]


class _Guard:
    """The values task t must not change, and the forward pre-hook that puts them back."""

    def __init__(self, learner: Learner, frozen: dict[str, torch.Tensor]) -> None:
        self.weights = [
            (layer.weight, frozen[name], layer.weight.detach()[frozen[name]].clone())
            for name, layer in learner.layers.items()
        ]
        others = [p for t in learner.masks for part in learner.parts for p in part.owned(t)]
        if learner.masks:  # shared layers: trained by the first task only
            others += learner.shared
        self.whole = [(p, p.detach().clone()) for p in others]

    @torch.no_grad()
    def restore(self, *_args) -> None:
        for weight, frozen, saved in self.weights:
            weight[frozen] = saved
        for param, saved in self.whole:
            param.copy_(saved)

    def intact(self) -> bool:
        same = all(torch.equal(w.detach()[f], s) for w, f, s in self.weights)
        return same and all(torch.equal(p.detach(), s) for p, s in self.whole)


# network -> its Learner, both held weakly (no entry outlives either; the module is not modified, so it
# still pickles): one Learner per network while that Learner lives
_OWNERS: weakref.WeakKeyDictionary[nn.Module, weakref.ref[Learner]] = weakref.WeakKeyDictionary()


class Learner:
    """Masks and per-task state of a network made by `masked()`, and the contexts that learn and use tasks.

    `capacity`: the fraction of each masked layer's weights a task keeps (default for `learning`).
    """

    def __init__(self, module: nn.Module, capacity: float = 0.5) -> None:
        masking_report(module)  # refuses a module that was not masked
        _check_capacity(capacity)
        owner = _OWNERS.get(module)
        first = owner() if owner is not None else None
        if first is not None:  # a second Learner would not know the first's tasks and would move their weights
            raise UsageError(
                f"this network already has a Learner (tasks learned: {first.tasks or 'none'}); keep using "
                "that one, or call wsn.masked on a fresh network"
            )
        _OWNERS[module] = weakref.ref(self)
        self.module, self.capacity = module, capacity
        self.layers: dict[str, SubnetLayer] = {n: m for n, m in module.named_modules() if isinstance(m, SubnetLayer)}
        self.parts = task_parts(module)
        self.shared = shared_parameters(module)
        self.masks: dict[int, dict[str, torch.Tensor]] = {}  # task -> layer -> bool mask (weight shape)
        self._busy = False

    @property
    def tasks(self) -> list[int]:
        """Tasks learned, in learning order."""
        return list(self.masks)

    def frozen(self) -> dict[str, torch.Tensor]:
        """Per layer: the weights some learned task keeps (bool, weight shape)."""
        union = {n: torch.zeros_like(layer.weight, dtype=torch.bool) for n, layer in self.layers.items()}
        for masks in self.masks.values():
            for name in union:
                union[name] |= masks[name]
        return union

    @contextmanager
    def learning(self, task: int, capacity: float | None = None) -> Iterator[nn.Module]:
        """Learn `task` with the caller's loop: yields the network in training mode, selecting the
        top-`capacity` weights per layer, earlier tasks' weights frozen. On a normal exit the task's
        masks are kept and the frozen values are checked bit for bit (ForgettingDetected otherwise);
        on an exception the task is dropped and every earlier value put back."""
        capacity = self.capacity if capacity is None else capacity
        _check_capacity(capacity)
        _check_task(task)
        if task in self.masks:
            raise TaskError(f"task {task} is already learned; learned: {self.tasks}")
        self._enter()
        device = next(iter(self.layers.values())).weight.device
        for part in self.parts:
            part.add_task(task, device)
        frozen = self.frozen()
        guard = _Guard(self, frozen)
        for name, layer in self.layers.items():
            layer.train_subnet(k_for_capacity(layer.weight.numel(), capacity), frozen[name] if self.masks else None)
        set_task(self.module, task)
        hook = self.module.register_forward_pre_hook(guard.restore)
        was_training = self.module.training
        self.module.train()
        try:
            yield self.module
            guard.restore()
            if not guard.intact():  # never: restore() just put them back
                raise ForgettingDetected(f"task {task}: a frozen weight differs after learning")
            self.masks[task] = {name: layer.current_mask().clone() for name, layer in self.layers.items()}
        except BaseException:
            guard.restore()
            for part in self.parts:
                for container in (getattr(part, "task_bias", None), getattr(part, "norms", None)):
                    if container is not None and str(task) in container:
                        del container[str(task)]
            raise
        finally:
            hook.remove()
            self._leave(was_training)

    @contextmanager
    def using(self, task: int) -> Iterator[nn.Module]:
        """Yields the network computing exactly `task`'s function (its masks, biases and BatchNorm,
        in eval mode; the masked weights are computed once and cached)."""
        if task not in self.masks:
            raise TaskError(f"task {task} is not learned; learned: {self.tasks or 'none'}")
        self._enter()
        for name, layer in self.layers.items():
            layer.use_mask(self.masks[task][name])
        set_task(self.module, task)
        was_training = self.module.training
        self.module.eval()
        try:
            yield self.module
        finally:
            self._leave(was_training)

    def _enter(self) -> None:
        if self._busy:
            raise UsageError("a learning() or using() context is already open on this learner")
        self._busy = True

    def _leave(self, was_training: bool) -> None:
        for layer in self.layers.values():
            layer.dense()
            layer.mode = "none"  # outside a context the network runs no task
        set_task(self.module, None)
        self.module.train(was_training)
        self._busy = False

    # capacity accounting ------------------------------------------------------------------
    def usage(self) -> dict[str, LayerUse]:
        """Per masked layer: its weights, how many some task keeps, and how many each task keeps."""
        frozen = self.frozen()
        return {
            name: LayerUse(
                layer.weight.numel(),
                int(frozen[name].sum()),
                {t: int(m[name].sum()) for t, m in self.masks.items()},
            )
            for name, layer in self.layers.items()
        }

    def used_fraction(self) -> float:
        """Fraction of all masked weights that some learned task keeps (what later tasks find frozen)."""
        use = self.usage().values()
        return sum(u.used for u in use) / max(1, sum(u.weights for u in use))


def _check_capacity(capacity: float) -> None:
    if not isinstance(capacity, (int, float)) or not 0.0 < float(capacity) <= 1.0:
        raise FieldError("capacity", f"must be a fraction in (0, 1], got {capacity!r}")


def _check_task(task: int) -> None:
    if isinstance(task, bool) or not isinstance(task, int) or task < 1:
        raise FieldError("task", f"must be an integer of 1 or more, got {task!r}")
