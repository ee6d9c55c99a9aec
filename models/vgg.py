"""VGG with batch norm for 32×32 inputs, as in the distillation literature (CRD, HSAKD): five conv
groups, max-pool between the first four, global average pooling and one linear layer (no FC stack).
`vgg16` is MAXL's network (docs/methods.md): 2-2-3-3-3 convs of 64-128-256-512-512 with a max-pool after
every group, so its features are the 1×1 map of the last pool.

The first group is the stem; groups 2–5 are the four stages HSAKD's branches attach to.
"""
from __future__ import annotations

import torch.nn as nn

from .backbones import StagedBackbone, chain_specs

GROUP_WIDTHS = {  # conv widths per group
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}
POOL_LAST_GROUP = {"vgg16"}  # MAXL's VGG-16 pools after its fifth group too (2×2 → 1×1)


def conv_group(widths: list[int], in_channels: int, stride: int = 1) -> nn.Sequential:
    """[max-pool when stride is 2] then conv3×3 (with bias, as VGG has) → BN → ReLU per width."""
    layers: list[nn.Module] = [nn.MaxPool2d(2)] if stride == 2 else []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


def vgg_bn(name: str) -> StagedBackbone:
    groups = GROUP_WIDTHS[name]
    stem = conv_group(groups[0], 3)
    # 32×32 → 16, 8, 4 after the first three pools; the last group stays at 4×4 (no fourth pool), except in
    # MAXL's VGG-16, which pools after every group: its fifth group runs at 2×2 and its final pool gives 1×1.
    strides = [2, 2, 2, 2] if name in POOL_LAST_GROUP else [2, 2, 2, 1]
    shapes = [(widths[-1], stride, widths) for widths, stride in zip(groups[1:], strides)]
    specs = chain_specs(conv_group, groups[0][-1], shapes)
    if name in POOL_LAST_GROUP:
        return StagedBackbone(stem, specs, nn.MaxPool2d(2), specs[-1].out_channels,
                              branch_final=lambda: nn.MaxPool2d(2))
    return StagedBackbone(stem, specs, nn.Identity(), specs[-1].out_channels)
