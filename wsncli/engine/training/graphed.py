"""A training step captured as one CUDA graph, for small networks where kernel launches dominate
(PMNIST at batch 10 is 270,000 steps). The selection on CUDA is static-shaped and has no host
synchronisation (nn.selection.static_topk_mask; tests/engine/test_sync_free.py shows the whole step
free of them on the CPU), so forward, backward and Adam replay as recorded; only the batch is copied
into the graph's input buffers. A batch of another size (the last of an epoch) runs eagerly.
Capture follows PyTorch's whole-network recipe: a few eager steps on a side stream first (real
steps on real batches), `set_to_none` gradients before capture, a capturable Adam; the dropout
generator is registered with the graph so each replay draws new masks.

A capture that fails is an optimisation lost, never the task: the stream that was current before is
made current again (torch's graph context leaves its capture stream current when ending the capture
raises), gradients allocated in the failed graph's memory are dropped, and every later step runs
eagerly; `failed` says why (train-task prints it as one warning). tests/engine/test_graphed.py forces
a failure on the CPU; benchmarks/gpu_check.sh checks that capture succeeds on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

WARMUP_STEPS = 3


class GraphedStep:
    """step(x, y) -> (loss x samples, correct), the same computation as the eager step."""

    def __init__(
        self, model, task: int, optimizer: torch.optim.Optimizer, eager: Callable, batch_size: int, draws=()
    ) -> None:
        self.model, self.task, self.optimizer, self.eager, self.batch = model, task, optimizer, eager, batch_size
        self.draws = list(draws)  # nn.dropout.DropoutDraw: their generators are registered with the graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self.warm = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.failed is not None or x.shape[0] != self.batch:
            return self.eager(x, y)
        if self.graph is None:
            if self.warm < WARMUP_STEPS:
                self.warm += 1
                return self._side_stream(x, y)
            previous = torch.cuda.current_stream()
            try:
                self._capture(x, y)
            except RuntimeError as exc:  # capture is an optimisation: never a failure of the task
                self._abandon(previous, exc)
                return self.eager(x, y)
            return self.loss.clone(), self.correct.clone()  # the capture ran this step (recorded, then replayed once)
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss.clone(), self.correct.clone()

    def _side_stream(self, x, y):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.eager(x, y)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _abandon(self, previous: torch.cuda.Stream, exc: BaseException) -> None:
        """After a failed capture: the previous stream current again, nothing of the failed graph kept."""
        self.failed = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
        torch.cuda.set_stream(previous)
        self.graph = None
        self.optimizer.zero_grad(set_to_none=True)  # gradients allocated in the failed graph's memory pool
        for draw in self.draws:  # a generator registered with an unfinished capture stays in capture mode
            fresh = torch.Generator(device=draw.generator.device)
            fresh.set_state(draw.generator.get_state())
            draw.generator = fresh
        _release_default_generator()
        torch.cuda.synchronize()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        for draw in self.draws:
            draw.total, draw.start = x.shape[0], 0
            register = getattr(graph, "register_generator_state", None)
            if register is not None:
                register(draw.generator)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.graph(graph, stream=stream):
            logits = self.model(self.x, self.task)  # (B, n_classes)
            loss = F.cross_entropy(logits, self.y)
            loss.backward()
            self.optimizer.step()
            self.loss = loss.detach() * self.x.shape[0]
            self.correct = (logits.detach().argmax(1) == self.y).sum()
        graph.replay()  # capture records without running: this replay is the step for (x, y)
        self.graph = graph


def graphs_pay(device: torch.device, n_weights: int, asked: bool | None) -> bool:
    """CUDA graphs: as asked, else on CUDA for networks under 2M weights (launch-bound steps)."""
    if device.type != "cuda":
        return False
    return asked if asked is not None else n_weights < 2_000_000


def _release_default_generator() -> None:
    """torch.cuda.graph registers the device's default generator; a capture that fails before its end
    leaves it in capture mode, and every later CUDA random draw of the process then fails ("Offset
    increment outside graph capture"). Give it a fresh state object holding the same seed and offset."""
    if not torch.cuda.is_available():
        return
    default = torch.cuda.default_generators[torch.cuda.current_device()]
    if not hasattr(default, "graphsafe_set_state"):
        return
    fresh = torch.Generator(device=default.device)
    fresh.set_state(default.get_state())
    default.graphsafe_set_state(fresh.graphsafe_get_state())
