"""Linear heads on backbone features, each fed either every view's row or only the identity views."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

ALL_VIEWS = "all_views"  # rows b·M + j for every j
IDENTITY_VIEW = "identity_view"  # rows b·M + 0 only


@dataclass(frozen=True)
class HeadSpec:
    name: str  # key of the logits in the network's output, e.g. "joint", "sd"
    outputs: int  # N·M for a joint head, N for a class head, M for a transform head
    rows: str = ALL_VIEWS


class MultiHeadNetwork(nn.Module):
    """Backbone plus named heads; forward returns {head name: logits}."""

    def __init__(self, backbone: nn.Module, head_specs: list[HeadSpec], num_transforms: int):
        super().__init__()
        self.backbone = backbone
        self.head_specs = list(head_specs)
        self.num_transforms = num_transforms
        self.heads = nn.ModuleDict({spec.name: nn.Linear(backbone.feature_dim, spec.outputs) for spec in head_specs})

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(views)
        identity_features = features[::self.num_transforms]  # rows b·M + 0
        return {spec.name: self.heads[spec.name](features if spec.rows == ALL_VIEWS else identity_features)
                for spec in self.head_specs}
