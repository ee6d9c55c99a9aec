"""LARS (You et al. 2017), as the contrastive recipes use it (SimCLR, BYOL; solo-learn's settings): SGD with
momentum whose step for each weight tensor is scaled by a trust ratio η‖w‖ / ‖g + λw‖.

Written here because the maintained implementations (timm's, lightly's) import torchvision, which does not
install beside this project's torch build; this one is checked against a float64 transcription in
tests/test_contrastive.py.

A parameter group with `exclude=True` is neither adapted nor decayed: `lars_groups` puts there biases and
normalisation parameters (tensors of one dimension) and, by name, a ViT's `pos_embed` and `cls_token`
(3-D tensors that a rule by rank would adapt and decay), as the references exclude them. With `clip_lr` the
scaled learning rate never exceeds the group's (LARC's clipping): the per-tensor factor is
min(η‖w‖ / ‖g + λw‖ / lr, 1)·lr.
"""
from __future__ import annotations

import torch


EXCLUDED_BY_NAME = ("pos_embed", "cls_token")


def excluded_from_lars(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in EXCLUDED_BY_NAME


def lars_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trained parameters in two groups: adapted and decayed, and excluded (`excluded_from_lars`)."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for name, p in trained if not excluded_from_lars(name, p)], "weight_decay": weight_decay},
            {"params": [p for name, p in trained if excluded_from_lars(name, p)], "exclude": True}]


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip_lr: bool = True):
        if lr < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr ≥ 0 and eta > 0; got lr={lr}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr,
                                      exclude=False))

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
                if not group["exclude"]:
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
