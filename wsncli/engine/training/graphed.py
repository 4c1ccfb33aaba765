"""A training step captured as one CUDA graph, for small networks where kernel launches dominate
(PMNIST at batch 10 is 270,000 steps). The selection on CUDA is sync-free and static-shaped
(nn.selection.static_topk_mask), so forward, backward and Adam replay as recorded; only the batch
is copied into the graph's input buffers. A batch of another size (the last of an epoch) runs eagerly.
Capture follows PyTorch's whole-network recipe: a few eager steps on a side stream first (real
steps on real batches), `set_to_none` gradients before capture, a capturable Adam.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

WARMUP_STEPS = 3


class GraphedStep:
    """step(x, y) -> (loss x samples, correct), the same computation as the eager step."""

    def __init__(self, model, task: int, optimizer: torch.optim.Optimizer, eager: Callable, batch_size: int) -> None:
        self.model, self.task, self.optimizer, self.eager, self.batch = model, task, optimizer, eager, batch_size
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
            try:
                self._capture(x, y)
            except RuntimeError as exc:  # capture is an optimisation: never a failure of the task
                self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                self.graph = None
                torch.cuda.synchronize()
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

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
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
