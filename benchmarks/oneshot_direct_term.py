"""Ablation of the one-shot score (docs/INFERENCE.md): ∂H/∂α_i with α in the masks only (wsn's rule) and
with α also weighing the heads' entropies (which adds the direct term H_i(f)/log n_i); per-sample
task-inference accuracy on the first N test inputs of every task.

    python benchmarks/oneshot_direct_term.py /tmp/wsn-infer-pmnist.pt --inputs 300

(the checkpoints benchmarks/task_inference.py learns).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import emit

from wsncli.engine.nn import superpose
from wsncli.engine.store.checkpoint import load_checkpoint
from wsncli.engine.usecases.infer import InferRequest, infer_tasks, inference_inputs
from wsncli.engine.usecases.record import recorded_task_data

MASKS_ONLY = superpose.Superposed.scores


def with_direct(self, x):
    """The score plus each head's share on the superposed features: α weighing the heads too."""
    scores = MASKS_ONLY(self, x)
    self._install()
    try:
        with torch.no_grad():
            features = self.model.trunk(x, superpose.SUPERPOSED)
            shares = [superpose.normalised_entropy(self.model.heads[str(t)](features)) for t in self.candidates]
    finally:
        self._remove()
    return scores + torch.stack(shares, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ckpt")
    parser.add_argument("--inputs", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.ckpt)
    root = Path(ckpt.meta.data_root) if ckpt.meta.data_root else None
    for name, scores in (("alpha in the masks only", MASKS_ONLY), ("alpha in the heads too", with_direct)):
        superpose.Superposed.scores = scores
        right = total = 0
        for task in ckpt.learned():
            x = inference_inputs(recorded_task_data(ckpt, task, root))[: args.inputs]
            result = infer_tasks(ckpt, x, InferRequest("oneshot"), torch.device("cpu"))
            right, total = right + int((result.tasks == task).sum()), total + len(x)
        print(f"{ckpt.meta.benchmark} {name}: {100 * right / total:.2f}% of {total}")
        emit(
            {"benchmark": ckpt.meta.benchmark, "variant": name, "task_inference_per_sample": right / total, "n": total}
        )
    superpose.Superposed.scores = MASKS_ONLY


if __name__ == "__main__":
    main()
