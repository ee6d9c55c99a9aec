"""MAXL's meta step (docs/methods.md, "MAXL", step 2): the gradient of the label generator θ2 through one
look-ahead SGD step of the learner θ1.

    θ1⁺ = θ1 − α ∇θ1 [L_pri(θ1) + L_aux(θ1, y_aux(θ2))]      (y_aux: θ2's mask-softmax labels)
    objective(θ2) = L_pri(θ1⁺) + λ H(ȳ_aux)

`second_order_objective` keeps θ1⁺ in the graph (torch.func.functional_call, create_graph=True), so the
gradient is exact. `forward_mode_objective` computes the same exact gradient without a double backward:
L_aux = mean_i Σ_k y_ik f_ik(θ1) is linear in the generated labels y, so

    ∂L_pri(θ1⁺)/∂y_ik = −α ∂/∂y_ik [∇θ1 L_aux · v] = −(α/B) (J_f v)_ik,    v = ∇θ1⁺ L_pri(θ1⁺),

a Jacobian-vector product of the per-label focal terms f (forward-mode AD: one forward with tangents).
`first_order_surrogate` replaces the Hessian-vector product by a central finite difference (DARTS): its
value is not the objective, but its gradient with respect to θ2 is the approximate meta-gradient, entropy
term included. Both surrogates start from `first_order_look_ahead`.

Every learner forward here runs in train mode on copies of θ1's buffers: BatchNorm uses the batch's
statistics and θ1's running statistics are left as they were.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.func import functional_call

from kernels import upcast
from train.methods.batch_norm_jvp import batch_norm_forward_mode
from train.methods.maxl_losses import ClassBlocks, focal_loss, focal_terms, mask_softmax, negative_entropy


@dataclass
class MetaSettings:
    lr: float  # α: θ1's current learning rate
    gamma: float  # focal loss γ
    entropy_weight: float  # λ
    blocks: ClassBlocks
    # Run the learner in NCHW whatever its parameters' layout (set for the double backward on a CPU, where
    # BatchNorm's double backward is slower on channels_last tensors: `python -m train.commands.bench step --method maxl`).
    contiguous: bool = False


def learner_weights(learner: torch.nn.Module, settings: MetaSettings) -> tuple[dict, dict]:
    parameters = dict(learner.named_parameters())
    if settings.contiguous:  # differentiable copies: gradients still reach θ1's parameters
        parameters = {name: p.contiguous() for name, p in parameters.items()}
    return parameters, dict(learner.named_buffers())


def forward_with(learner: torch.nn.Module, parameters: dict, buffers: dict, images: torch.Tensor) -> dict:
    """The learner with these parameters, BatchNorm updating copies of the buffers (θ1's stay untouched)."""
    copies = {name: buffer.clone() for name, buffer in buffers.items()}
    return functional_call(learner, {**parameters, **copies}, (images,))


def training_loss(outputs: dict, labels: torch.Tensor, aux_targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """θ1's objective: L_pri + L_aux, both focal, batch means."""
    return focal_loss(outputs["primary"], labels, gamma) + focal_loss(outputs["auxiliary"], aux_targets, gamma)


def second_order_objective(learner: torch.nn.Module, generator_logits: torch.Tensor, images: torch.Tensor,
                           labels: torch.Tensor, settings: MetaSettings) -> tuple[torch.Tensor, dict]:
    """L_pri(θ1⁺) + λH, differentiable with respect to `generator_logits` (and so θ2) to second order."""
    parameters, buffers = learner_weights(learner, settings)
    images = images.contiguous() if settings.contiguous else images
    aux_targets = mask_softmax(generator_logits, labels, settings.blocks)
    inner = training_loss(forward_with(learner, parameters, buffers, images), labels, aux_targets, settings.gamma)
    names = [name for name, p in parameters.items() if p.requires_grad]
    grads = torch.autograd.grad(inner, [parameters[n] for n in names], create_graph=True, allow_unused=True)
    fast = dict(parameters)
    for name, grad in zip(names, grads):
        if grad is not None:
            fast[name] = parameters[name] - settings.lr * grad
    look_ahead = focal_loss(forward_with(learner, fast, buffers, images)["primary"], labels, settings.gamma)
    entropy = negative_entropy(aux_targets)
    return look_ahead + settings.entropy_weight * entropy, {"meta_primary": look_ahead.detach(),
                                                            "label_entropy": -entropy.detach()}


@dataclass
class LookAhead:
    """The first-order look-ahead both surrogates start from: θ1's weights as the objectives see them, the
    generated labels, L_pri(θ1⁺) and v = ∇θ1⁺ L_pri(θ1⁺) per trainable parameter (`names`)."""
    parameters: dict
    buffers: dict
    images: torch.Tensor
    names: list[str]
    aux_targets: torch.Tensor
    loss: torch.Tensor
    direction: list[torch.Tensor]


def first_order_look_ahead(learner: torch.nn.Module, generator_logits: torch.Tensor, images: torch.Tensor,
                           labels: torch.Tensor, settings: MetaSettings) -> LookAhead:
    """θ1⁺ = θ1 − α∇θ1(L_pri + L_aux) detached, then v = ∇θ1⁺ L_pri(θ1⁺): both first order."""
    parameters, buffers = learner_weights(learner, settings)
    images = images.contiguous() if settings.contiguous else images
    names = [name for name, p in parameters.items() if p.requires_grad]
    aux_targets = mask_softmax(generator_logits, labels, settings.blocks)
    inner = training_loss(forward_with(learner, parameters, buffers, images), labels, aux_targets.detach(),
                          settings.gamma)
    grads = torch.autograd.grad(inner, [parameters[n] for n in names], allow_unused=True)
    fast = {name: (parameters[name] - settings.lr * grad if grad is not None else parameters[name]).detach()
            .requires_grad_() for name, grad in zip(names, grads)}
    look_ahead = focal_loss(forward_with(learner, {**parameters, **fast}, buffers, images)["primary"], labels,
                            settings.gamma)
    direction = torch.autograd.grad(look_ahead, list(fast.values()), allow_unused=True)
    direction = [torch.zeros_like(fast[n]) if d is None else d for n, d in zip(names, direction)]
    return LookAhead(parameters, buffers, images, names, aux_targets, look_ahead, direction)


def forward_mode_objective(learner: torch.nn.Module, generator_logits: torch.Tensor, images: torch.Tensor,
                           labels: torch.Tensor, settings: MetaSettings) -> tuple[torch.Tensor, dict]:
    """A scalar whose θ2-gradient is the exact meta-gradient of `second_order_objective` (module docstring),
    from two first-order backward passes and one forward-mode pass instead of a double backward."""
    ahead = first_order_look_ahead(learner, generator_logits, images, labels, settings)
    fixed = {name: p.detach() for name, p in ahead.parameters.items()}
    # forward_ad rather than torch.func.jvp: the latter fails under autocast (conv's rule meets a float
    # tangent and a cast weight); in a ResNet-20 meta step the bf16 JVP added no error beyond bf16's own
    with torch.no_grad(), forward_ad.dual_level(), batch_norm_forward_mode():
        duals = {name: forward_ad.make_dual(fixed[name], d) for name, d in zip(ahead.names, ahead.direction)}
        logits = forward_with(learner, {**fixed, **duals}, ahead.buffers, ahead.images)["auxiliary"]
        tangent = forward_ad.unpack_dual(focal_terms(F.log_softmax(upcast(logits), dim=1), settings.gamma)).tangent
    entropy = negative_entropy(ahead.aux_targets)
    surrogate = -settings.lr * (ahead.aux_targets * tangent).sum(dim=1).mean() + settings.entropy_weight * entropy
    return surrogate, {"meta_primary": ahead.loss.detach(), "label_entropy": -entropy.detach()}


def first_order_surrogate(learner: torch.nn.Module, generator_logits: torch.Tensor, images: torch.Tensor,
                          labels: torch.Tensor, settings: MetaSettings, epsilon: float = 0.01) -> tuple[torch.Tensor, dict]:
    """A scalar whose θ2-gradient is −α·(∇θ2 L(θ1 + εv) − ∇θ2 L(θ1 − εv)) / 2ε + λ∇θ2 H, v = ∇ L_pri(θ1⁺),
    ε = epsilon / ‖v‖ (DARTS); unlike the official shortcut it keeps the entropy term."""
    ahead = first_order_look_ahead(learner, generator_logits, images, labels, settings)
    parameters, names, aux_targets = ahead.parameters, ahead.names, ahead.aux_targets
    norm = torch.sqrt(sum((d.float() ** 2).sum() for d in ahead.direction))
    step = epsilon / norm.clamp_min(1e-12)
    with torch.no_grad():
        plus = {n: parameters[n] + step * d for n, d in zip(names, ahead.direction)}
        minus = {n: parameters[n] - step * d for n, d in zip(names, ahead.direction)}
    loss_plus = training_loss(forward_with(learner, {**parameters, **plus}, ahead.buffers, ahead.images), labels,
                              aux_targets, settings.gamma)
    loss_minus = training_loss(forward_with(learner, {**parameters, **minus}, ahead.buffers, ahead.images), labels,
                               aux_targets, settings.gamma)
    entropy = negative_entropy(aux_targets)
    surrogate = -settings.lr * (loss_plus - loss_minus) / (2 * step) + settings.entropy_weight * entropy
    return surrogate, {"meta_primary": ahead.loss.detach(), "label_entropy": -entropy.detach()}


ORDERS = ("second", "first")  # --maxl-order
META_GRADIENTS = ("forward", "graph")  # --maxl-meta-gradient: how the second-order gradient is computed


def objective_for(order: str, meta_gradient: str):
    if order == "first":
        return first_order_surrogate
    return forward_mode_objective if meta_gradient == "forward" else second_order_objective
