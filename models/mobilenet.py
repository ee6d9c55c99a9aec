"""MobileNetV2 for 32×32 inputs at width 0.5, the student of the distillation literature (CRD,
HSAKD): stride-1 stem, inverted residual groups (t, c, n, s) grouped into four stages, a 1×1
conv to 1280 channels, global average pooling.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import StagedBackbone, chain_specs


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1×1 expand (×t, kept even at t = 1 as the CIFAR reference does) → 3×3 depthwise → 1×1 linear."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.body = nn.Sequential(*conv_bn_relu(in_channels, hidden, 1),
                                  *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                                  nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# Stages of (t, c, n, s) groups; the stride of a stage is its first group's.
STAGES = [[(1, 16, 1, 1), (6, 24, 2, 1)], [(6, 32, 3, 2)], [(6, 64, 4, 2), (6, 96, 3, 1)],
          [(6, 160, 3, 2), (6, 320, 1, 1)]]


def inverted_residual_stage(groups: list[tuple], width_multiplier: float, in_channels: int,
                            stride: int) -> nn.Sequential:
    blocks = []
    for index, (expansion, channels, count, group_stride) in enumerate(groups):
        out_channels = int(channels * width_multiplier)
        for repeat in range(count):
            first_stride = stride if index == 0 else group_stride
            blocks.append(InvertedResidual(in_channels, out_channels, first_stride if repeat == 0 else 1, expansion))
            in_channels = out_channels
    return nn.Sequential(*blocks)


def mobilenet_v2(width_multiplier: float = 0.5) -> StagedBackbone:
    stem_width = int(32 * width_multiplier)
    stem = nn.Sequential(*conv_bn_relu(3, stem_width, 3))
    shapes = [(int(groups[-1][1] * width_multiplier), groups[0][3], groups, width_multiplier) for groups in STAGES]
    specs = chain_specs(inverted_residual_stage, stem_width, shapes)
    last_channels, feature_dim = specs[-1].out_channels, 1280

    def final() -> nn.Sequential:
        return nn.Sequential(*conv_bn_relu(last_channels, feature_dim, 1))

    return StagedBackbone(stem, specs, final(), feature_dim, branch_final=final)
