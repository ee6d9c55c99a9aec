"""HSAKD networks: a staged backbone with an N-way head plus one auxiliary joint classifier
after every stage (Yang et al., IJCAI 2021; docs/methods.md).

Branch l copies the shape of the stages after l (the last stage's branch is one more copy of
the last stage at stride 1), then ends as the backbone does (BN-ReLU for pre-activation nets such
as WRN, nothing more for post-activation ResNets and VGG whose blocks end in ReLU, the 1×1 conv of
MobileNetV2/ShuffleNetV2), global average pooling and a linear layer with N·M outputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import StagedBackbone, initialise


class AuxiliaryBranch(nn.Module):
    def __init__(self, backbone: StagedBackbone, after_stage: int, outputs: int):
        super().__init__()
        specs = backbone.stage_specs
        if after_stage < len(specs) - 1:
            stages = [spec.build() for spec in specs[after_stage + 1:]]
        else:
            stages = [specs[-1].build(in_channels=specs[-1].out_channels, stride=1)]
        self.body = nn.Sequential(*stages, backbone.branch_final(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(backbone.feature_dim, outputs)
        initialise(self)

    def forward(self, stage_output: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(stage_output))


class HsakdNetwork(nn.Module):
    """forward(views [B·M, C, H, W]) → {"logits": [B·M, N] (the backbone head on every row),
    "branches": [q_1 … q_L], each [B·M, N·M] joint logits}."""

    def __init__(self, backbone: StagedBackbone, num_classes: int, num_transforms: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.branches = nn.ModuleList(AuxiliaryBranch(backbone, stage, num_classes * num_transforms)
                                      for stage in range(len(backbone.stages)))
        self.backbone_frozen = False

    def forward(self, views: torch.Tensor) -> dict:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            stage_outputs = self.backbone.stage_outputs(views)
            logits = self.head(self.backbone.pooled(stage_outputs[-1]))
        return {"logits": logits, "branches": [branch(output) for branch, output in zip(self.branches, stage_outputs)]}

    def backbone_modules(self) -> list[nn.Module]:
        return [self.backbone, self.head]

    def freeze_backbone(self) -> None:
        """Only the branches learn from now on: the backbone and head keep their weights and, in eval
        mode whatever train() says, their BN statistics."""
        self.backbone_frozen = True
        for module in self.backbone_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            for module in self.backbone_modules():
                module.eval()
        return self


class MutualPair(nn.Module):
    """Two HSAKD networks trained together (online mutual distillation); outputs {"a": …, "b": …}."""

    def __init__(self, first: HsakdNetwork, second: HsakdNetwork):
        super().__init__()
        self.a, self.b = first, second

    def forward(self, views: torch.Tensor) -> dict:
        return {"a": self.a(views), "b": self.b(views)}
