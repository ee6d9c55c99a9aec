"""Every backbone by name: `--model`, `--teacher-model`, the presets and the benchmarks use these names."""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbones import StagedBackbone, cifar_resnet, resnet_four_stage, wide_resnet
from .blocks import BasicBlock, Bottleneck
from .mobilenet import mobilenet_v2
from .shufflenet import shufflenet_v1, shufflenet_v2
from .vgg import vgg_bn
from .vit import vit

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
    "resnet50_cifar": lambda: resnet_four_stage(Bottleneck, [3, 4, 6, 3], imagenet_stem=False),
    "resnet18": lambda: resnet_four_stage(BasicBlock, [2, 2, 2, 2], imagenet_stem=True),
    "resnet34": lambda: resnet_four_stage(BasicBlock, [3, 4, 6, 3], imagenet_stem=True),
    "resnet50": lambda: resnet_four_stage(Bottleneck, [3, 4, 6, 3], imagenet_stem=True),
    "vgg8": lambda: vgg_bn("vgg8"),
    "vgg13": lambda: vgg_bn("vgg13"),
    "vgg16": lambda: vgg_bn("vgg16"),
    "mobilenetv2": lambda: mobilenet_v2(0.5),
    "shufflenet_v1": lambda: shufflenet_v1(3),
    "shufflenet_v2": lambda: shufflenet_v2(),
    "vit_tiny": lambda: vit("vit_tiny"),  # patch 4, built for 32 px (other sizes resize the position embeddings)
    "vit_small": lambda: vit("vit_small"),
}


class RepresentationBackbone(nn.Module):
    """`<model>+mlp<width>`: a backbone followed by Linear → BN → ReLU, the representation SimCLR v2 takes from
    its projector's first layer (so that fine-tuning and linear probes start from that layer)."""

    def __init__(self, base: nn.Module, width: int):
        super().__init__()
        self.base = base
        self.layer = nn.Sequential(nn.Linear(base.feature_dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True))
        self.feature_dim = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layer(self.base(images))


def build_backbone(name: str) -> nn.Module:
    base, plus, width = name.partition("+mlp")
    if plus:
        if not width.isdigit() or int(width) < 1:
            raise ValueError(f"model {name!r}: +mlp takes a positive width, e.g. {base}+mlp2048")
        return RepresentationBackbone(build_backbone(base), int(width))
    if name not in BACKBONES:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name]()
