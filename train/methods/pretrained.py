"""Backbones from another run's checkpoint: `--init-from` (any method starts from a pretrained backbone, e.g.
SimCLR then SLA) and `linear_eval` (a linear classifier on a frozen pretrained backbone)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


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

    def network(self, model_name, num_classes):
        network = FrozenBackboneNetwork(build_backbone(model_name), [HeadSpec("class", num_classes, IDENTITY_VIEW)],
                                        self.num_transforms)
        self.record = load_backbone(network.backbone, self.config.pretrained, "--pretrained", model_name)
        return network.freeze()

    def provenance(self):
        return dict(self.record)
