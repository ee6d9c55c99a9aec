"""ShuffleNet V1 (groups 3) and V2 (×1) for 32×32 inputs, as in the distillation literature (CRD,
HSAKD): three stages, each opening with a stride-2 unit, global average pooling.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import StagedBackbone, chain_specs


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    return x.view(batch, groups, channels // groups, height, width).transpose(1, 2).reshape(batch, channels,
                                                                                           height, width)


class ShuffleV1Unit(nn.Module):
    """Grouped 1×1 → shuffle → 3×3 depthwise → grouped 1×1; stride 2 concatenates an average-pooled
    shortcut (so the branch makes out − in channels), stride 1 adds the input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_in_network: bool):
        super().__init__()
        self.stride = stride
        made = out_channels - in_channels if stride == 2 else out_channels
        mid = made // 4
        # The network's first pointwise conv is not grouped: its input has few channels (ShuffleNet §3.3).
        self.squeeze_groups = 1 if first_in_network else groups
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=self.squeeze_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, made, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(made)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.squeeze_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        return F.relu(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


def shuffle_v1_stage(units: int, groups: int, stem_width: int, out_channels: int, in_channels: int,
                     stride: int) -> nn.Sequential:
    blocks = []
    for index in range(units):
        blocks.append(ShuffleV1Unit(in_channels, out_channels, stride if index == 0 else 1, groups,
                                    first_in_network=index == 0 and in_channels == stem_width))
        in_channels = out_channels
    return nn.Sequential(*blocks)


def shufflenet_v1(groups: int = 3) -> StagedBackbone:
    stem_width, widths, units = 24, [240, 480, 960], [4, 8, 4]
    stem = nn.Sequential(nn.Conv2d(3, stem_width, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
    specs = chain_specs(shuffle_v1_stage, stem_width,
                        [(width, 2, count, groups, stem_width, width) for width, count in zip(widths, units)])
    return StagedBackbone(stem, specs, nn.Identity(), widths[-1])


def pointwise(in_channels: int, out_channels: int) -> list:
    return [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def depthwise(channels: int, stride: int) -> list:
    return [nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False), nn.BatchNorm2d(channels)]


class ShuffleV2Unit(nn.Module):
    """Stride 1: half the channels pass through, the other half go 1×1 → 3×3 dw → 1×1; stride 2: both
    halves are computed from the whole input (dw → 1×1 on the left). Concatenate, shuffle in 2."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        half = out_channels // 2
        right_in = in_channels if stride == 2 else in_channels // 2
        self.right = nn.Sequential(*pointwise(right_in, half), *depthwise(half, stride), *pointwise(half, half))
        self.left = (nn.Sequential(*depthwise(in_channels, 2), *pointwise(in_channels, half)) if stride == 2
                     else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            left, right = self.left(x), self.right(x)
        else:
            left, right = x.chunk(2, dim=1)
            right = self.right(right)
        return channel_shuffle(torch.cat([left, right], 1), 2)


def shuffle_v2_stage(units: int, out_channels: int, in_channels: int, stride: int) -> nn.Sequential:
    blocks = []
    for index in range(units):
        blocks.append(ShuffleV2Unit(in_channels, out_channels, stride if index == 0 else 1))
        in_channels = out_channels
    return nn.Sequential(*blocks)


def shufflenet_v2() -> StagedBackbone:
    """×1 widths 116/232/464 with 4/8/4 units, then a 1×1 conv to 1024."""
    stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True))
    widths, units = [116, 232, 464], [4, 8, 4]
    specs = chain_specs(shuffle_v2_stage, 24, [(width, 2, count, width) for width, count in zip(widths, units)])

    def final() -> nn.Sequential:
        return nn.Sequential(*pointwise(widths[-1], 1024))

    return StagedBackbone(stem, specs, final(), 1024, branch_final=final)
