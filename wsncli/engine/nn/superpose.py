"""Task-inference scores over a network's stored subnetworks (REFERENCE.md section 9).

Both rules score each candidate task i for each input b; the lowest score wins.

- `entropy_scores`: task i's own subnetwork (mask, BatchNorm statistics, biases) and head on the
  input; score = H(softmax(head_i)) / log(n_i), the entropy normalised to [0, 1] so that tasks with
  different class counts compare (a one-class head cannot express confidence: its score is 1).
  k forward passes.
- `Superposed.scores`: SupSup's one-shot rule on WSN. The superposed network uses the masked weights
  W ⊙ Σ_i α_i M_i with α_i = 1/k (a fixed per-weight count of the candidates using each weight), the
  uniform mixture of the candidates' normalisations (an affine-free BatchNorm mixture is itself one:
  Σ_i (z - μ_i)/σ_i / k) and the mean of their biases; its features f go through every candidate's
  head, and H = (1/k) Σ_i H(softmax(head_i(f))) / log n_i (each head's normalised entropy, mixed with
  fixed weights: a head is only meaningful on its own classes, so entropies are mixed, not logits).
  As in SupSup, α enters only the masks: score = ∂H/∂α_i = Σ_layers <∂H/∂z_l, layer_l(h_l; W ⊙ M_i)>,
  since z_l = layer_l(h_l; W_eff) is linear in W_eff (the derivative through the weights is the layer
  re-applied with task i's masked weights), per sample. One forward and one backward, then one
  re-application of each layer per candidate. (Letting α also weigh the heads' entropies adds the
  direct term H_i(f)/log n_i; measured worse on 2 of 3 benchmarks: docs/RESULTS.md section 13.)

Inputs are the network's inputs under each candidate's transform: `transforms[i]` maps the raw batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from wsncli.engine.nn.base import WSNNet, set_task_mode

SUPERPOSED = 0  # the pseudo task id of the superposed network's norms and biases (task ids are >= 1)
Transform = Callable[[torch.Tensor], torch.Tensor]


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) / log(n) per row (B,); 1 for a one-class head."""
    n = logits.shape[1]
    if n < 2:
        return torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
    logp = torch.log_softmax(logits, 1)  # (B, n)
    return -(logp.exp() * logp).sum(1) / math.log(n)  # (B,)


@torch.no_grad()
def entropy_scores(
    model: WSNNet,
    x: torch.Tensor,
    candidates: list[int],
    masks: dict[int, dict[str, torch.Tensor] | None],
    transforms: dict[int, Transform],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(scores (B, k), each candidate's logits (B, n_i)) for raw inputs x (B, *sample)."""
    scores, logits = [], []
    for task in candidates:
        set_task_mode(model, masks[task])
        out = model(transforms[task](x), task)  # (B, n_i)
        logits.append(out)
        scores.append(normalised_entropy(out))
    return torch.stack(scores, 1), logits  # (B, k)


class Superposed:
    """The superposed network of `candidates` (all with masks), set up once and used per batch."""

    def __init__(self, model: WSNNet, candidates: list[int], masks: dict[int, dict[str, torch.Tensor]]) -> None:
        self.model, self.candidates, self.masks = model, candidates, masks
        k = len(candidates)
        self.weights = {}
        for name, layer in model.subnet_layers().items():
            count = sum(masks[t][name].to(torch.float32) for t in candidates)  # (weight shape): tasks using it
            self.weights[name] = layer.weight.detach() * (count / k)  # W ⊙ Σ α_i M_i, α_i = 1/k
        self.norms = _mixed_norms(model, candidates)
        self.biases = _mixed_biases(model, candidates)

    def _install(self) -> None:
        model = self.model
        for name, layer in model.subnet_layers().items():
            layer.use_mask(self.masks[self.candidates[0]][name])
            layer._cached_weight = self.weights[name]  # the fixed-mode cache holds the superposed weight
        if self.norms is not None:
            model.task_norms[str(SUPERPOSED)] = self.norms
        if self.biases is not None:
            model.task_biases[str(SUPERPOSED)] = self.biases
        model.needs_task_mode = False
        model.eval()

    def _remove(self) -> None:
        model = self.model
        for key in (model.task_norms, model.task_biases):
            if str(SUPERPOSED) in key:
                del key[str(SUPERPOSED)]
        for layer in model.subnet_layers().values():
            layer._cached_weight = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """∂H/∂α_i per input (B, k) for x (B, *sample), already the superposed network's input."""
        model, layers = self.model, self.model.subnet_layers()
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}

        def hook(name):
            def capture(_module, args, out):
                inputs[name] = args[0].detach()
                outputs[name] = out  # in the graph (the input requires grad): ∂H/∂z_l is asked for it

            return capture

        self._install()
        handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
        try:
            with torch.enable_grad():
                features = model.trunk(x.detach().requires_grad_(), SUPERPOSED)  # (B, F)
                shares = torch.stack(
                    [normalised_entropy(model.heads[str(t)](features)) for t in self.candidates], 1
                )  # (B, k): H_i / log n_i, each head's share
                total = shares.mean(1).sum()  # Σ_b (1/k) Σ_i H_i,b: samples are independent in eval mode
                grads = torch.autograd.grad(total, [outputs[n] for n in layers])
            with torch.no_grad():
                result = torch.zeros_like(shares)  # (B, k): α enters the masks only
                for (name, layer), delta in zip(layers.items(), grads):  # delta: (B, *z_l)
                    h = inputs[name]
                    for i, task in enumerate(self.candidates):
                        w_i = torch.where(self.masks[task][name], layer.weight.detach(), 0.0)  # W ⊙ M_i
                        result[:, i] += (delta * layer._apply_weight(h, w_i)).flatten(1).sum(1)
        finally:
            for handle in handles:
                handle.remove()
            self._remove()
        return result  # (B, k)

    def batch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """∂H/∂α_i of the whole batch's total entropy (k,), SupSup's batch form: one forward, one
        backward to the superposed weights, then per task one masked sum of ∂H/∂W_eff ⊙ W (its cost does
        not grow with the batch). Equals `scores(x).sum(0)`."""
        model, layers = self.model, self.model.subnet_layers()
        self._install()
        leaves = {}
        for name, layer in layers.items():
            leaves[name] = self.weights[name].clone().requires_grad_()
            layer._cached_weight = leaves[name]
        try:
            with torch.enable_grad():
                features = model.trunk(x, SUPERPOSED)  # (B, F)
                shares = torch.stack([normalised_entropy(model.heads[str(t)](features)) for t in self.candidates], 1)
                grads = torch.autograd.grad(shares.mean(1).sum(), list(leaves.values()))
            with torch.no_grad():
                result = torch.zeros(len(self.candidates), dtype=x.dtype, device=x.device)
                for (name, layer), grad in zip(layers.items(), grads):
                    gw = grad * layer.weight.detach()  # (weight shape): ∂H/∂W_eff ⊙ W
                    for i, task in enumerate(self.candidates):
                        result[i] += (gw * self.masks[task][name]).sum()  # a product: faster than indexing
        finally:
            self._remove()
        return result  # (k,)


def _mixed_norms(model: WSNNet, candidates: list[int]) -> nn.ModuleList | None:
    """One affine-free BatchNorm per position equal to the mean of the candidates' normalisations:
    mean_i (z - μ_i)/σ_i = (z - μ)/σ with 1/σ = mean_i 1/σ_i and μ = σ · mean_i μ_i/σ_i."""
    if not model.task_norms or str(candidates[0]) not in model.task_norms:
        return None
    mixed = copy.deepcopy(model.task_norms[str(candidates[0])])
    for j, norm in enumerate(mixed):
        stats = [model.task_norms[str(t)][j] for t in candidates]
        sigmas = [torch.sqrt(s.running_var + s.eps) for s in stats]  # (C,) each
        inv = torch.stack([1 / s for s in sigmas]).mean(0)  # (C,)
        mu = torch.stack([s.running_mean / sg for s, sg in zip(stats, sigmas)]).mean(0) / inv  # (C,)
        norm.running_mean.copy_(mu)
        norm.running_var.copy_((1 / inv).square() - norm.eps).clamp_(min=0.0)
    return mixed


def _mixed_biases(model: WSNNet, candidates: list[int]) -> nn.ParameterList | None:
    if not model.task_biases:
        return None
    per_task = [list(model.task_biases[str(t)]) for t in candidates]
    return nn.ParameterList(
        nn.Parameter(torch.stack([b.detach() for b in layer]).mean(0), requires_grad=False) for layer in zip(*per_task)
    )
