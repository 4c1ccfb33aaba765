"""The optimizer of one task's training: Adam (lr as set, torch's betas and eps, no weight decay, fresh
per task), with the masked layers' update fused into the step on the CPU.

- `MaskedAdam` (WSN on the CPU): the masked layers' weights and scores follow nn.adam's definition,
  every other parameter (the task's head and biases) torch's fused Adam. With the C kernels and
  `fuse`, `zero_grad(set_to_none=True)` arms every masked layer and the next backward applies the
  update in place, one pass per layer (those parameters get no `.grad`); parameters that do have a
  `.grad` at `step()` (data-parallel runs, after the all-reduce; or without the kernels) are updated
  there by the same kernel or its torch reference: the same bits either way.
- torch.optim.Adam (fused) for the dense fine-tune baseline and for the device path (CUDA, or
  $WSN_KERNELS=static on the CPU), where steps may be captured as CUDA graphs.

The state is torch.optim.Adam's (per parameter `step`, `exp_avg`, `exp_avg_sq`, in the order of the
parameters given), so a snapshot's `state_dict()` restores either optimizer bit for bit.
"""

from __future__ import annotations

import torch

from wsncli.engine.nn.adam import AdamSettings, LayerAdam, adam_reference, new_state
from wsncli.engine.nn.base import WSNNet
from wsncli.engine.nn.selection import kernels_available, static_on_cpu
from wsncli.engine.nn.subnet import SubnetLayer


class MaskedAdam(torch.optim.Optimizer):
    """Adam over the masked layers (`layers`: their weights and scores) and `others` (see the module)."""

    def __init__(self, layers: list[SubnetLayer], others: list[torch.nn.Parameter], lr: float, fuse: bool = True):
        self.hp = AdamSettings(lr)
        masked = [p for layer in layers for p in (layer.weight, layer.scores)]
        defaults = dict(lr=lr, betas=(self.hp.beta1, self.hp.beta2), eps=self.hp.eps, weight_decay=0.0)
        super().__init__([{"params": masked}, {"params": list(others)}], defaults)
        self.layers = layers
        self.use_kernels = kernels_available() and all(
            p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous() for p in masked
        )
        self.fuse = fuse and self.use_kernels
        for p in masked:
            self.state[p] = new_state(p)
        self._rest = torch.optim.Adam(others, lr=lr, fused=True) if others else None
        self._link()

    def _link(self) -> None:
        """Point the heads' Adam and the layers' fused backward at this optimizer's state."""
        if self._rest is not None:
            self._rest.state = self.state
        self._adams: list[LayerAdam | None] = []
        for layer in self.layers:
            adam = None
            if self.use_kernels:
                adam = LayerAdam(self.state[layer.weight], self.state[layer.scores], self.hp)
            layer.attach_adam(adam if self.fuse else None)
            self._adams.append(adam)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().zero_()
        if set_to_none and self.fuse:
            for adam in self._adams:
                adam.armed = True  # type: ignore[union-attr]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._rest is not None:
            self._rest.step()
        for layer, adam in zip(self.layers, self._adams):
            if adam is not None:
                adam.armed = False
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

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for layer in self.layers:
            for p in (layer.weight, layer.scores):
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
    if method != "wsn" or device.type != "cpu" or static_on_cpu():
        return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"), capturable=graphed)
    layers = list(model.subnet_layers().values())
    masked = {id(p) for layer in layers for p in (layer.weight, layer.scores)}
    return MaskedAdam(layers, [p for p in params if id(p) not in masked], lr, fuse=not data_parallel)
