"""MAXL's two networks (docs/methods.md, "MAXL"): the multi-task learner θ1 with a primary and an
auxiliary head, and the label generator θ2. Heads are the paper's MLPs (Linear d→d, ReLU, Linear)."""
from __future__ import annotations

import torch
import torch.nn as nn


def mlp_head(features: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, outputs))


class MaxlLearner(nn.Module):
    """θ1: backbone → {"primary": [B, N] logits, "auxiliary": [B, K] logits}."""

    def __init__(self, backbone: nn.Module, num_classes: int, num_aux_classes: int):
        super().__init__()
        self.backbone = backbone
        self.primary = mlp_head(backbone.feature_dim, num_classes)
        self.auxiliary = mlp_head(backbone.feature_dim, num_aux_classes)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        return {"primary": self.primary(features), "auxiliary": self.auxiliary(features)}


class LabelGenerator(nn.Module):
    """θ2: backbone → [B, K] logits; the method masks them to the image's class block (mask softmax)."""

    def __init__(self, backbone: nn.Module, num_aux_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = mlp_head(backbone.feature_dim, num_aux_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
