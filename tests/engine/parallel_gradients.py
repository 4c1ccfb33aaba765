"""One data-parallel training step's gradients, saved for comparison: a test tool, never installed.

`python tests/engine/parallel_gradients.py OUT` in one process, or under torchrun, builds the same
`conv` network with per-task biases (seed 0), takes one step on the same batch of 15 (two processes:
parts of 7 and 8) with the engine's own data-parallel step (parallel.shard) or the plain one, and
writes every parameter's gradient to OUT (rank 0 only).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from wsncli.engine.nn.base import ModelConfig
from wsncli.engine.nn.dropout import DropoutDraw, use_draw
from wsncli.engine.nn.models import build_model


def main(out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig("conv", (1, 20, 20), bias=True))
    model.add_task(1, 2)
    model.train_subnet(0.5, None)
    params = [p for layer in model.subnet_layers().values() for p in (layer.weight, layer.scores)]
    params += [*model.heads["1"].parameters(), *model.task_biases["1"].parameters()]
    optimizer = torch.optim.SGD(params, lr=0.0)  # gradients only
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(15, 1, 20, 20, generator=data), torch.randint(0, 2, (15,), generator=data)
    draw = DropoutDraw(torch.Generator().manual_seed(5), total=15)
    use_draw(model, draw)
    model.train()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from wsncli.engine.parallel.shard import Shard

        shard = Shard(torch.device("cpu"))
        shard.step(shard.wrap(model, 1, params), optimizer, 1, draw, x, y)
        rank = shard.rank
        shard.unwrap()
        shard.close()
        if rank != 0:
            return
    else:
        optimizer.zero_grad()
        F.cross_entropy(model(x, 1), y).backward()
    torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None}, out)


if __name__ == "__main__":
    main(sys.argv[1])
