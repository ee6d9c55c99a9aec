"""Staged convolutional backbones: stem → stages → final → global average pool → features [B, d].

Stages are kept apart (a ModuleList) so that heads or per-stage auxiliary branches can
attach after any of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .blocks import BasicBlock, Bottleneck, PreActBlock


@dataclass(frozen=True)
class StageSpec:
    """How a stage was built, so that a copy of its shape can be built again (HSAKD's branches)."""
    block: type
    in_channels: int
    width: int
    depth: int
    stride: int

    @property
    def out_channels(self) -> int:
        return self.width * self.block.expansion

    def build(self, in_channels: int | None = None, stride: int | None = None) -> nn.Sequential:
        return make_stage(self.block, self.in_channels if in_channels is None else in_channels, self.width,
                          self.depth, self.stride if stride is None else stride)[0]


class StagedBackbone(nn.Module):
    def __init__(self, stem: nn.Module, stages: list[nn.Module], final: nn.Module, feature_dim: int,
                 stage_specs: list[StageSpec] | None = None):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_specs = list(stage_specs or [])
        self.final = final  # BN-ReLU for pre-activation nets, identity otherwise
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = feature_dim
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


def make_stage(block, in_channels: int, width: int, num_blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    blocks = []
    for index in range(num_blocks):
        blocks.append(block(in_channels, width, stride if index == 0 else 1))
        in_channels = width * block.expansion
    return nn.Sequential(*blocks), in_channels


def stack_stages(block, stem_width, widths, depths, strides) -> tuple[list[nn.Sequential], int, list[StageSpec]]:
    stages, specs, channels = [], [], stem_width
    for width, depth, stride in zip(widths, depths, strides):
        specs.append(StageSpec(block, channels, width, depth, stride))
        stage, channels = make_stage(block, channels, width, depth, stride)
        stages.append(stage)
    return stages, channels, specs


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
    stages, channels, specs = stack_stages(BasicBlock, stem_width, widths, [(depth - 2) // 6] * 3, [1, 2, 2])
    return StagedBackbone(stem, stages, nn.Identity(), channels, specs)


def wide_resnet(depth: int, widen: int) -> StagedBackbone:
    """WRN-d-k: pre-activation blocks, (d−4)/6 per stage, 16k/32k/64k channels."""
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4; got {depth}")
    widths = [16 * widen, 32 * widen, 64 * widen]
    stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    stages, channels, specs = stack_stages(PreActBlock, 16, widths, [(depth - 4) // 6] * 3, [1, 2, 2])
    final = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
    return StagedBackbone(stem, stages, final, channels, specs)


def resnet_four_stage(block, depths: list[int], imagenet_stem: bool) -> StagedBackbone:
    """ResNet-18/50 layout; the CIFAR stem is one 3×3 conv with no max-pool (for 32×32 inputs)."""
    if imagenet_stem:
        stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    else:
        stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    stages, channels, specs = stack_stages(block, 64, [64, 128, 256, 512], depths, [1, 2, 2, 2])
    return StagedBackbone(stem, stages, nn.Identity(), channels, specs)


BACKBONES = {
    "resnet8": lambda: cifar_resnet(8),
    "resnet20": lambda: cifar_resnet(20),
    "resnet32": lambda: cifar_resnet(32),
    "resnet44": lambda: cifar_resnet(44),
    "resnet56": lambda: cifar_resnet(56),
    "resnet110": lambda: cifar_resnet(110),
    "resnet8x4": lambda: cifar_resnet(8, 4),
    "resnet32x4": lambda: cifar_resnet(32, 4),
    "wrn16_2": lambda: wide_resnet(16, 2),
    "wrn40_1": lambda: wide_resnet(40, 1),
    "wrn40_2": lambda: wide_resnet(40, 2),
    "wrn28_10": lambda: wide_resnet(28, 10),
    "resnet18_cifar": lambda: resnet_four_stage(BasicBlock, [2, 2, 2, 2], imagenet_stem=False),
    "resnet18": lambda: resnet_four_stage(BasicBlock, [2, 2, 2, 2], imagenet_stem=True),
    "resnet34": lambda: resnet_four_stage(BasicBlock, [3, 4, 6, 3], imagenet_stem=True),
    "resnet50": lambda: resnet_four_stage(Bottleneck, [3, 4, 6, 3], imagenet_stem=True),
}


def build_backbone(name: str) -> StagedBackbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name]()
