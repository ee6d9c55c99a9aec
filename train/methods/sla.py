"""SLA (Lee et al., ICML 2020; docs/methods.md, "SLA"): one joint N·M head on the joint labels y·M + j,
evaluated by single (SI) and aggregated (AG) inference, and SLA+SD, its self-distilled N-way head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

import kernels
from models import ALL_VIEWS, IDENTITY_VIEW, HeadSpec
from train.methods.baselines import HeadsMethod
from train.options import AT_LEAST_0, POSITIVE, field


@dataclass
class SlaOptions:
    """The "SLA: sla, sla_sd" settings (TrainConfig composes every family's)."""
    HELP_GROUP: ClassVar[str] = "SLA: sla, sla_sd"
    temperature: float = field(default=1.0, metadata={
        "limit": POSITIVE, "help": "SLA+SD distillation temperature T"})
    sd_weight: float = field(default=1.0, metadata={
        "limit": AT_LEAST_0, "help": "SLA+SD weight β of CE(c, y)"})
    sum_over_transforms: bool = field(default=False, metadata={
        "help": "multiply L_SLA by M (paper's large loss)"})


class SLA(HeadsMethod):
    """L_SLA = mean over rows of CE(joint logits, y·M + j)."""
    name, primary_score = "sla", "AG"

    def head_specs(self, num_classes):
        return [HeadSpec("joint", num_classes * self.num_transforms, ALL_VIEWS)]

    def sla_loss(self, outputs, labels):
        return self.loss_kernels.joint_cross_entropy(outputs["joint"], labels, self.num_transforms,
                                                     self.config.sum_over_transforms)

    def losses(self, outputs, labels):
        return {"loss": self.sla_loss(outputs, labels)}

    def class_scores(self, outputs):
        joint = outputs["joint"]
        return {"SI": kernels.single_view_logits(joint, self.num_transforms),
                "AG": self.loss_kernels.aggregate_logits(joint, self.num_transforms)}

    def score_names(self):
        return ("SI", "AG")


class SLASelfDistillation(SLA):
    """SLA+SD: L_SLA + T²·KL(softmax(AG/T).detach() ‖ softmax(c/T)) + β·CE(c, y)."""
    name, primary_score = "sla_sd", "SD"

    def head_specs(self, num_classes):
        return super().head_specs(num_classes) + [HeadSpec("sd", num_classes, IDENTITY_VIEW)]

    def losses(self, outputs, labels):
        sla = self.sla_loss(outputs, labels)
        aggregated = self.loss_kernels.aggregate_logits(outputs["joint"].detach(), self.num_transforms)
        distill = self.loss_kernels.distillation_kl(outputs["sd"], aggregated, self.config.temperature)
        sd_ce = F.cross_entropy(outputs["sd"], labels)  # in float32 under the step's autocast
        return {"loss": sla + distill + self.config.sd_weight * sd_ce, "sla": sla, "distill": distill,
                "sd_ce": sd_ce}

    def class_scores(self, outputs):
        return {"SD": outputs["sd"], **super().class_scores(outputs)}

    def score_names(self):
        return ("SD", "SI", "AG")
