"""The optimizer of one task's training: Adam (lr as set, torch's betas and eps, no weight decay, fresh
per task), with the masked layers' update fused into the step on the CPU.

- `MaskedAdam` (WSN on the CPU): the masked layers' weights and scores follow nn.adam's definition,
  every other parameter (the task's head and biases) torch's fused Adam kernel. With the C kernels
  and `fuse`, the layers' backward leaves only the masked weight's gradient and `step()` forms both
  straight-through gradients and the update of weight and scores in one pass per layer (nn.fused;
  weight and scores never get a `.grad`); parameters that do have a `.grad` at `step()` (data-parallel
  runs, after the all-reduce; or without the kernels) are updated by the same kernel or its torch
  reference: the same bits either way.
- torch.optim.Adam (fused) for the dense fine-tune baseline and for the device path (CUDA, or a model
  under nn.subnet.set_static_selection on the CPU), where steps may be captured as CUDA graphs.

The state is torch.optim.Adam's (per parameter `step`, `exp_avg`, `exp_avg_sq`, in the order of the
parameters given), so a snapshot's `state_dict()` restores either optimizer bit for bit.
"""

from __future__ import annotations

import torch

from wsncli.engine.nn.adam import AdamSettings, LayerAdam, adam_reference, new_state
from wsncli.engine.nn.base import WSNNet
from wsncli.engine.nn.selection import kernels_available
from wsncli.engine.nn.subnet import SubnetLayer


class MaskedAdam(torch.optim.Optimizer):
    """Adam over the masked layers (`layers`: their weights and scores) and `others` (see the module)."""

    def __init__(self, layers: list[SubnetLayer], others: list[torch.nn.Parameter], lr: float, fuse: bool = True):
        self.hp = AdamSettings(lr)
        masked = [p for layer in layers for p in (layer.weight, layer.scores)]
        defaults = dict(lr=lr, betas=(self.hp.beta1, self.hp.beta2), eps=self.hp.eps, weight_decay=0.0)
        super().__init__([{"params": masked}, {"params": list(others)}], defaults)
        self.layers, self.others = layers, list(others)
        self.use_kernels = kernels_available() and all(
            p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous() for p in masked
        )
        self.fuse = fuse and self.use_kernels  # per layer where the C kernels run it (nn.subnet: 0 < k < n)
        for p in masked + self.others:
            self.state[p] = new_state(p)
        self._link()

    def _link(self) -> None:
        """Point the layers' fused steps and the others' lists at this optimizer's state tensors."""
        self._adams: list[LayerAdam | None] = []
        for layer in self.layers:
            adam = LayerAdam(self.state[layer.weight], self.state[layer.scores], self.hp) if self.use_kernels else None
            if self.fuse and layer.fused is not None:
                layer.attach_adam(adam)
            self._adams.append(adam)
        states = [self.state[p] for p in self.others]
        self._moments = ([s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states])
        self._steps = [s["step"] for s in states]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().zero_()
        for layer in self.layers:
            leaf = None if layer.fused is None else layer.fused.leaf
            if leaf is not None and leaf.grad is not None:
                leaf.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_others()
        for layer, adam in zip(self.layers, self._adams):
            if layer.fused is not None and layer.fused.adam is not None and layer.fused.step():
                continue
            gw, gs = layer.weight.grad, layer.scores.grad
            if adam is not None and gw is not None and gs is not None:
                threads = torch.get_num_threads()
                adam.fused_update(
                    layer.weight,
                    layer.scores,
                    layer._free,
                    threads,
                    grad_weight=gw.contiguous(),
                    grad_scores=gs.contiguous(),
                )
                continue
            if gw is not None:
                free = None if layer._free is None else layer._free.view(gw.shape)
                adam_reference(layer.weight, gw, self.state[layer.weight], self.hp, free)
            if gs is not None:
                adam_reference(layer.scores, gs, self.state[layer.scores], self.hp)
        return loss

    def _step_others(self) -> None:
        """torch's fused Adam over the parameters with a gradient among the others: the kernel
        torch.optim.Adam(fused=True) runs, with the same arguments (the same bits)."""
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p, m, v, s in zip(self.others, *self._moments, self._steps):
            if p.grad is not None:
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(m)
                exp_avg_sqs.append(v)
                steps.append(s)
        if not params:
            return
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            amsgrad=False,
            lr=self.hp.lr,
            beta1=self.hp.beta1,
            beta2=self.hp.beta2,
            weight_decay=0.0,
            eps=self.hp.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                s = self.state[p]
                s["step"] = torch.tensor(float(s["step"]), dtype=torch.float32)
                for key in ("exp_avg", "exp_avg_sq"):
                    s[key] = s[key].to(device=p.device, dtype=torch.float32).contiguous()
        self._link()


def make_optimizer(
    model: WSNNet,
    params: list[torch.nn.Parameter],
    method: str,
    lr: float,
    device: torch.device,
    graphed: bool,
    data_parallel: bool,
) -> torch.optim.Optimizer:
    """The optimizer of one task: MaskedAdam for WSN on the CPU (its update fused into the backward
    unless data-parallel), else torch's fused Adam (capturable for CUDA graphs)."""
    layers = list(model.subnet_layers().values())
    if method != "wsn" or device.type != "cpu" or any(layer.static_selection for layer in layers):
        return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"), capturable=graphed)
    masked = {id(p) for layer in layers for p in (layer.weight, layer.scores)}
    return MaskedAdam(layers, [p for p in params if id(p) not in masked], lr, fuse=not data_parallel)
