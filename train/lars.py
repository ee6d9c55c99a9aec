"""LARS (You et al. 2017), as the contrastive recipes use it (SimCLR, BYOL; solo-learn's settings): SGD with
momentum whose step for each weight tensor is scaled by a trust ratio η‖w‖ / ‖g + λw‖.

Written here because the maintained implementations (timm's, lightly's) import torchvision, which does not
install beside this project's torch build; this one is checked against a float64 transcription in
tests/test_contrastive.py.

Biases and normalisation parameters (tensors of one dimension) are excluded from both the trust ratio and
weight decay (`exclude_bias_n_norm`), and with `clip_lr` the scaled learning rate never exceeds the
group's (LARC's clipping): the per-tensor factor is min(η‖w‖ / ‖g + λw‖ / lr, 1)·lr.
"""
from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip_lr: bool = True, exclude_bias_n_norm: bool = True):
        if lr < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr ≥ 0 and eta > 0; got lr={lr}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr,
                                      exclude_bias_n_norm=exclude_bias_n_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                adapted = not (group["exclude_bias_n_norm"] and param.ndim <= 1)
                if adapted:
                    if group["weight_decay"]:
                        grad = grad.add(param, alpha=group["weight_decay"])
                    weight_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
                    trust = torch.where((weight_norm > 0) & (grad_norm > 0),
                                        group["eta"] * weight_norm / grad_norm, torch.ones_like(weight_norm))
                    if group["clip_lr"] and lr > 0:
                        trust = torch.clamp(trust / lr, max=1.0)  # × lr below: the step size is min(trust, lr)
                    scaled = grad * trust
                else:
                    scaled = grad
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(scaled).detach()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(scaled)
                param.add_(state["momentum_buffer"], alpha=-lr)
        return loss
