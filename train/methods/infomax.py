"""Deep InfoMax (Hjelm et al. 2019), `--method dim`: maximise the mutual information between an image's
global feature vector y (the backbone's pooled features, what evaluation reads) and its feature map M
(the output of stage `--dim-local-stage`), with negatives from the other images of the (global) batch.

Both objectives use "encode and dot product" critics: T(M, y) = ψ(M)·φ(y)/√E, E the codes' width. The
reference does not scale; here the scale keeps the scores of fresh E-wide codes near unit size, which SGD
at lr 0.1 needed (the unscaled local InfoNCE diverged within a few steps on digits). With the reference's
LayerNorm codes and Adam at 1e-4 (the `dim` defaults) a one-off unscaled run on digits trained as well.
    local:  T_p(M, y) = ψ_l(M)[:, p]·φ_l(y) at every map position p (1×1-conv encoder)
    global: T(M, y) = ψ_g(M)·φ_g(y) (3×3 conv, pooled, linear encoder of the whole map)
Estimators (`--mi-estimator`): infonce — −log of the positive's share of exp(T) among the positive and
the negatives; jsd — softplus(−T) on positives plus softplus(T) on negatives (each a mean). The local
InfoNCE candidates of (image b, position p) are M_b's feature at p and every position of every other
image's map. Loss = `--dim-global-weight`·global + `--dim-local-weight`·local; the paper's prior-matching
term is not implemented. Math: docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import upcast
from models import build_backbone
from train.methods.contrastive import ContrastiveMethod
from train.methods.contrastive_losses import ONE_PROCESS, Ranks, gather_with_gradient, own_columns
from train.options import AT_LEAST_0, field


@dataclass
class DimOptions:
    """The "Deep InfoMax: dim" settings (TrainConfig composes every family's)."""
    HELP_GROUP: ClassVar[str] = "Deep InfoMax: dim"
    mi_estimator: str = field(default="infonce", metadata={
        "help": "dim: infonce or jsd"})
    dim_local_stage: int = field(default=-2, metadata={
        "resume": True, "help": "dim: the stage whose feature map is M (negative: from the last; -2 is 8×8 on CIFAR "
                "ResNets)"})
    dim_global_weight: float = field(default=0.5, metadata={
        "limit": AT_LEAST_0, "help": "dim: α, the global objective's weight"})
    dim_local_weight: float = field(default=1.0, metadata={
        "limit": AT_LEAST_0, "help": "dim: β, the local objective's weight"})


ESTIMATORS = ("infonce", "jsd")


class ResidualEncoder(nn.Module):
    """x → (layer, BN, ReLU, layer) plus a linear shortcut, then LayerNorm over the code: the reference's critic
    encoders (cortex_DIM's MI1x1ConvNet; 1×1 convolutions for maps, Linear for vectors). The shortcut starts
    near the identity (weights U(−0.01, 0.01), 1 on the diagonal) so the first codes carry the features."""

    def __init__(self, inputs: int, width: int, spatial: bool):
        super().__init__()
        layer = (lambda i, o, bias: nn.Conv2d(i, o, 1, bias=bias)) if spatial else nn.Linear
        norm = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        self.spatial = spatial
        self.mlp = nn.Sequential(layer(inputs, width, False), norm(width), nn.ReLU(inplace=True),
                                 layer(width, width, True))
        self.shortcut = layer(inputs, width, False)
        with torch.no_grad():
            weight = self.shortcut.weight.view(width, inputs)
            weight.uniform_(-0.01, 0.01)
            if width >= inputs:
                weight.diagonal().fill_(1.0)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.mlp(x) + self.shortcut(x)
        if not self.spatial:
            return self.norm(codes)
        return self.norm(codes.movedim(1, -1)).movedim(-1, 1)


class InfomaxNetwork(nn.Module):
    """The backbone and DIM's four critic encoders; training returns y, M's local codes and both global codes."""

    def __init__(self, backbone: nn.Module, local_stage: int, width: int):
        super().__init__()
        self.backbone, self.local_stage = backbone, local_stage
        map_channels = backbone.stage_specs[local_stage].out_channels
        self.local_map = ResidualEncoder(map_channels, width, spatial=True)
        self.local_vector = ResidualEncoder(backbone.feature_dim, width, spatial=False)
        self.global_map = nn.Sequential(nn.Conv2d(map_channels, width, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten(), nn.Linear(width, width), nn.LayerNorm(width))
        self.global_vector = ResidualEncoder(backbone.feature_dim, width, spatial=False)

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        stages = self.backbone.stage_outputs(views)
        features = self.backbone.pooled(stages[-1])
        if not self.training:
            return {"features": features}
        feature_map = stages[self.local_stage]
        return {"features": features,
                "local_map": self.local_map(feature_map).flatten(2),  # [B, E, P]
                "local_vector": self.local_vector(features),  # [B, E]
                "global_map": self.global_map(feature_map), "global_vector": self.global_vector(features)}


def global_mi_loss(map_codes: torch.Tensor, vector_codes: torch.Tensor, estimator: str,
                   ranks: Ranks = ONE_PROCESS) -> torch.Tensor:
    """[B, E] codes of M and of y; scores T[b, b'] = φ(y_b)·ψ(M_b')/√E, positives where b' = b (every rank's
    maps are candidates, with their gradient)."""
    everyone, offset = gather_with_gradient(upcast(map_codes), ranks)
    scores = upcast(vector_codes) @ everyone.T / math.sqrt(vector_codes.shape[1])  # [B, B_global]
    rows = torch.arange(scores.shape[0], device=scores.device)
    if estimator == "infonce":
        return F.cross_entropy(scores, rows + offset)
    return jsd_terms(scores[rows, rows + offset], scores, own_columns(rows, offset, scores.shape[1]))


def jsd_terms(positives: torch.Tensor, scores: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """The JSD estimator: mean softplus(−T) over the positive pairs plus mean softplus(T) over the others; the
    others' mean as a masked sum over their known count (a boolean-mask gather would wait for the device)."""
    negatives = scores.numel() - positive_mask.sum() * (scores.numel() // positive_mask.numel())
    return F.softplus(-positives).mean() + F.softplus(scores).masked_fill(positive_mask, 0).sum() / negatives


def local_mi_loss(map_codes: torch.Tensor, vector_codes: torch.Tensor, estimator: str,
                  ranks: Ranks = ONE_PROCESS) -> torch.Tensor:
    """[B, E, P] local codes and [B, E] vector codes; T[b, b', p] = φ(y_b)·ψ(M_b')[:, p]/√E."""
    everyone, offset = gather_with_gradient(upcast(map_codes), ranks)
    scores = torch.einsum("be,cep->bcp", upcast(vector_codes), everyone) / math.sqrt(vector_codes.shape[1])
    rows = torch.arange(scores.shape[0], device=scores.device)
    positives = scores[rows, rows + offset]  # [B, P]
    own = own_columns(rows, offset, scores.shape[1]).unsqueeze(2)  # [B, B_global, 1]
    if estimator == "infonce":
        negatives = torch.logsumexp(scores.masked_fill(own, float("-inf")).flatten(1), dim=1)
        return -(positives - torch.logaddexp(positives, negatives.unsqueeze(1))).mean()
    return jsd_terms(positives, scores, own)


class DeepInfomax(ContrastiveMethod):
    """`dim`: one random view per image (recipe `dim`), the global and local DIM objectives."""
    name, view_recipe = "dim", "dim"
    pairs_views = False  # one view an image

    def __init__(self, config):
        super().__init__(config)
        if config.mi_estimator not in ESTIMATORS:
            raise ValueError(f"unknown --mi-estimator {config.mi_estimator!r}; valid: {', '.join(ESTIMATORS)}")

    def network(self, model_name, num_classes):
        backbone = build_backbone(model_name)
        stages = len(getattr(backbone, "stage_specs", ()))
        if not stages:
            raise ValueError(f"dim needs a staged backbone (its feature maps); {model_name} has none")
        local_stage = self.config.dim_local_stage % stages
        return InfomaxNetwork(backbone, local_stage, self.config.projector_dim)

    def losses(self, outputs, labels):
        estimator = self.config.mi_estimator
        global_term = global_mi_loss(outputs["global_map"], outputs["global_vector"], estimator, self.ranks)
        local_term = local_mi_loss(outputs["local_map"], outputs["local_vector"], estimator, self.ranks)
        loss = self.config.dim_global_weight * global_term + self.config.dim_local_weight * local_term
        return {"loss": loss, "global_mi": global_term.detach(), "local_mi": local_term.detach()}
