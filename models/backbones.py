"""Staged convolutional backbones: stem → stages → final → global average pool → features [B, d].

Stages are kept apart (a ModuleList) so that heads or per-stage auxiliary branches can
attach after any of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn as nn

from .blocks import BasicBlock, PreActBlock


@dataclass(frozen=True)
class StageSpec:
    """How to build a stage, so that HSAKD's branches can build fresh copies of its shape."""
    make: Callable[[int, int], nn.Module]  # (in_channels, stride) → a new stage
    in_channels: int
    out_channels: int
    stride: int

    def build(self, in_channels: int | None = None, stride: int | None = None) -> nn.Module:
        return self.make(self.in_channels if in_channels is None else in_channels,
                         self.stride if stride is None else stride)


def activated_batch_norm(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class StagedBackbone(nn.Module):
    """stem → stages (built from their specs) → final → global average pool → features [B, feature_dim].

    `branch_final` builds what an auxiliary branch puts between its stage copies and its pooling
    (default: like `final`, BN-ReLU for pre-activation nets and nothing for post-activation ones;
    MobileNetV2 and ShuffleNetV2 repeat their 1×1 conv to feature_dim)."""

    def __init__(self, stem: nn.Module, stage_specs: list[StageSpec], final: nn.Module, feature_dim: int,
                 branch_final: Callable[[], nn.Module] | None = None):
        super().__init__()
        self.stem = stem
        self.stage_specs = list(stage_specs)
        self.stages = nn.ModuleList(spec.build() for spec in self.stage_specs)
        self.final = final  # BN-ReLU for pre-activation nets, identity otherwise
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = feature_dim
        last_channels = self.stage_specs[-1].out_channels
        # A branch ends as its backbone does: BN-ReLU only where the backbone has one (pre-activation nets);
        # post-activation blocks already end in ReLU (the official HSAKD branches).
        self.branch_final = branch_final or (
            nn.Identity if isinstance(final, nn.Identity) else (lambda: activated_batch_norm(last_channels)))
        initialise(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pooled(self.stage_outputs(images)[-1])

    def stage_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after every stage."""
        outputs, x = [], self.stem(images)
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def pooled(self, last_stage_output: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.final(last_stage_output)), 1)


def initialise(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def residual_stage(block, width: int, num_blocks: int, in_channels: int, stride: int) -> nn.Sequential:
    blocks = []
    for index in range(num_blocks):
        blocks.append(block(in_channels, width, stride if index == 0 else 1))
        in_channels = width * block.expansion
    return nn.Sequential(*blocks)


def chain_specs(make_stage: Callable, in_channels: int, shapes: list[tuple]) -> list[StageSpec]:
    """Stage specs for stages fed one into the next; shapes[i] = (out_channels, stride, *arguments), and
    `make_stage(*arguments, in_channels, stride)` builds stage i."""
    specs = []
    for out_channels, stride, *arguments in shapes:
        specs.append(StageSpec(partial(make_stage, *arguments), in_channels, out_channels, stride))
        in_channels = out_channels
    return specs


def residual_specs(block, stem_width: int, widths, depths, strides) -> list[StageSpec]:
    return chain_specs(partial(residual_stage, block), stem_width,
                       [(width * block.expansion, stride, width, depth)
                        for width, depth, stride in zip(widths, depths, strides)])


def cifar_resnet(depth: int, width_multiplier: int = 1) -> StagedBackbone:
    """He et al. CIFAR ResNet-(6n+2): three stages of n basic blocks, 16/32/64 channels (×k for the x4 nets)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2; got {depth}")
    stem_width = 16 * width_multiplier
    widths = [16 * width_multiplier * 2**i for i in range(3)]
    if width_multiplier > 1:  # ResNet32x4/8x4 (CRD/HSAKD): 32 stem, stages 64/128/256
        stem_width, widths = 32, [64, 128, 256]
    stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, padding=1, bias=False), nn.BatchNorm2d(stem_width),
                         nn.ReLU(inplace=True))
    specs = residual_specs(BasicBlock, stem_width, widths, [(depth - 2) // 6] * 3, [1, 2, 2])
    return StagedBackbone(stem, specs, nn.Identity(), specs[-1].out_channels)


def wide_resnet(depth: int, widen: int) -> StagedBackbone:
    """WRN-d-k: pre-activation blocks, (d−4)/6 per stage, 16k/32k/64k channels."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4; got {depth}")
    widths = [16 * widen, 32 * widen, 64 * widen]
    stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    specs = residual_specs(PreActBlock, 16, widths, [(depth - 4) // 6] * 3, [1, 2, 2])
    channels = specs[-1].out_channels
    return StagedBackbone(stem, specs, activated_batch_norm(channels), channels)


def resnet_four_stage(block, depths: list[int], imagenet_stem: bool) -> StagedBackbone:
    """ResNet-18/50 layout; the CIFAR stem is one 3×3 conv with no max-pool (for 32×32 inputs)."""
    if imagenet_stem:
        stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    else:
        stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    specs = residual_specs(block, 64, [64, 128, 256, 512], depths, [1, 2, 2, 2])
    return StagedBackbone(stem, specs, nn.Identity(), specs[-1].out_channels)
