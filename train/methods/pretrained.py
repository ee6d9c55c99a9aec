"""Backbones from another run's checkpoint: `--init-from` (any method starts from a pretrained backbone, e.g.
SimCLR then SLA) and `linear_eval` (a linear classifier on a frozen pretrained backbone)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from models import HeadSpec, IDENTITY_VIEW, MultiHeadNetwork, build_backbone
from train.methods.baselines import Baseline
from train.methods.run_checkpoints import load_backbone
from train.options import field


@dataclass
class PretrainedOptions:
    """The "pretrained backbones: linear_eval, --init-from" settings (TrainConfig composes every family's)."""
    HELP_GROUP: ClassVar[str] = "pretrained backbones: linear_eval, --init-from"
    pretrained: str = field(default="", metadata={
        "resume": True, "help": "linear_eval: the run checkpoint whose frozen backbone the linear classifier reads "
                "(e.g. a simclr best.pt)"})
    init_from: str = field(default="", metadata={
        "resume": True, "help": "start the backbone from this run checkpoint (same --model; e.g. simclr pretraining, "
                "then sla)"})
    probe_batch_norm: str = field(default="pretrained", metadata={
        "resume": True, "help": "linear_eval: the frozen backbone's BatchNorm statistics: pretrained (the "
                "checkpoint's) or recomputed (averaged over the training images, unaugmented, before the probe "
                "trains: the fair control for an untrained network, whose statistics are the initial ones)"})


class FrozenBackboneNetwork(MultiHeadNetwork):
    """A linear probe: the backbone keeps its weights and its BN statistics (eval mode whatever train() says)."""

    def freeze(self) -> "FrozenBackboneNetwork":
        self.backbone.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self


class LinearEval(Baseline):
    """`linear_eval`: a linear classifier trained with CE on the frozen features of `--pretrained`."""
    name = "linear_eval"

    def __init__(self, config):
        super().__init__(config)
        if not config.pretrained:
            raise ValueError("linear_eval needs --pretrained CKPT (a run's best.pt or last.pt, e.g. of simclr)")
        if config.init_from:
            raise ValueError("linear_eval takes its backbone from --pretrained; --init-from is for fine-tuning")
        self.record: dict = {}
        self.splits = None

    def see_data(self, splits) -> None:
        self.splits = splits  # --probe-batch-norm recomputed reads the training images

    def network(self, model_name, num_classes):
        network = FrozenBackboneNetwork(build_backbone(model_name), [HeadSpec("class", num_classes, IDENTITY_VIEW)],
                                        self.num_transforms)
        self.record = load_backbone(network.backbone, self.config.pretrained, "--pretrained", model_name)
        return network.freeze()

    def build_model(self, model_name, num_classes, family, device, channels_last):
        network = super().build_model(model_name, num_classes, family, device, channels_last)
        if self.config.probe_batch_norm == "recomputed":
            train = self.splits.train
            recompute_batch_norm(network.backbone, train.images, self.splits.mean, self.splits.std, device,
                                 channels_last)
            self.record["probe_batch_norm"] = f"recomputed over {len(train)} training images"
        return network

    def provenance(self):
        return dict(self.record)


def recompute_batch_norm(backbone: nn.Module, images: np.ndarray, mean, std, device: torch.device,
                         channels_last: bool, batch: int = 256) -> None:
    """Set every BatchNorm's running statistics to the average of its batch statistics over `images` (uint8
    [n, H, W, C], normalised as the loaders do, unaugmented; momentum None: a cumulative average), in forward
    passes without gradients; the weights are untouched and the backbone is left in eval mode."""
    norms = [module for module in backbone.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    shift = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    scale = torch.tensor(std, device=device).view(1, -1, 1, 1)
    backbone.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            pixels = torch.from_numpy(images[start:start + batch]).to(device).permute(0, 3, 1, 2).float()
            views = (pixels / 255.0 - shift) / scale
            backbone(views.contiguous(memory_format=torch.channels_last) if channels_last else views)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    backbone.eval()
