"""Training methods as registry entries: which heads they need, their losses, their class scores.

Each `losses` returns {"loss": total, part: value, ...}; each `class_scores` returns
{evaluation name: [B, N] logits}. The math is methods.md's, equation by equation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from models import ALL_VIEWS, IDENTITY_VIEW, HeadSpec, MultiHeadNetwork, build_backbone


@dataclass
class MethodOptions:
    temperature: float = 1.0  # SLA+SD T
    sd_weight: float = 1.0  # SLA+SD β
    sum_over_transforms: bool = False  # L_SLA × M
    kernel_backend: str = "auto"
    kd_temperature: float = 3.0  # HSAKD τ
    teacher: str = ""  # hsakd_student: the teacher checkpoint
    teacher_model: str = ""  # hsakd_student: the architecture the teacher checkpoint must have ("" = any)
    frozen_backbone: str = ""  # hsakd_teacher: checkpoint of a pretrained backbone to freeze
    peer_model: str = ""  # hsakd_online: the second network ("" = the same as the first)

    @classmethod
    def from_config(cls, config) -> "MethodOptions":
        """The method's fields of a train.config.TrainConfig (the same names, `kernels` → kernel_backend)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "kernel_backend"]
        return cls(kernel_backend=config.kernels, **{name: getattr(config, name) for name in names})


def per_view_labels(labels: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """Class label of every row b·M+j: y[b]."""
    return labels.repeat_interleave(num_transforms)


def transform_labels(batch: int, num_transforms: int, device) -> torch.Tensor:
    """Transform label of every row b·M+j: j."""
    return torch.arange(num_transforms, device=device).repeat(batch)


def views_mean(class_logits: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """[B·M, N] → [B, N]: the mean of an N-way head's logits over an image's views."""
    return class_logits.float().reshape(-1, num_transforms, class_logits.shape[1]).mean(dim=1)


def place(network: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    network = network.to(device)
    return network.to(memory_format=torch.channels_last) if channels_last else network


class Method:
    name = ""
    uses_transforms = True  # False: trains on the identity view alone (M = 1)
    primary_score = "SI"  # the score used for model selection

    def __init__(self, options: MethodOptions):
        self.options = options

    def head_specs(self, num_classes: int, num_transforms: int) -> list[HeadSpec]:
        raise NotImplementedError

    def build_model(self, model_name: str, num_classes: int, family, device: torch.device,
                    channels_last: bool) -> nn.Module:
        """The trained network, on `device` (and in channels_last when asked): a backbone plus this method's heads."""
        network = MultiHeadNetwork(build_backbone(model_name), self.head_specs(num_classes, family.num_transforms),
                                   family.num_transforms)
        return place(network, device, channels_last)

    def forward(self, model: nn.Module, views: torch.Tensor):
        """The training forward pass; a method with a teacher adds the teacher's outputs here."""
        return model(views)

    def provenance(self) -> dict:
        """What outside this run the method depends on (e.g. a teacher checkpoint's path and hash)."""
        return {}

    def check_resume(self, checkpoint: dict) -> None:
        """Refuse to resume a checkpoint trained against a different file than this run depends on."""
        recorded = checkpoint.get("provenance", {})
        for key, value in self.provenance().items():
            if key.endswith("_sha256") and recorded.get(key) != value:
                what = key[: -len("_sha256")]
                raise ValueError(f"the --resume checkpoint was trained with --{what.replace('_', '-')} "
                                 f"{recorded.get(what)} (sha256 {recorded.get(key)}), but this run's "
                                 f"{self.provenance().get(what)} has sha256 {value}")

    def losses(self, outputs, labels, num_transforms) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def class_scores(self, outputs, num_transforms) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Baseline(Method):
    """Plain CE on the identity view with an N-way head."""
    name, uses_transforms = "baseline", False

    def head_specs(self, num_classes, num_transforms):
        return [HeadSpec("class", num_classes, IDENTITY_VIEW)]

    def losses(self, outputs, labels, num_transforms):
        return {"loss": F.cross_entropy(outputs["class"].float(), labels)}

    def class_scores(self, outputs, num_transforms):
        return {"SI": outputs["class"]}


class TransformsAsAugmentation(Method):
    """`da`: every view labelled with its class, N-way head."""
    name, primary_score = "da", "AG"

    def head_specs(self, num_classes, num_transforms):
        return [HeadSpec("class", num_classes, ALL_VIEWS)]

    def losses(self, outputs, labels, num_transforms):
        return {"loss": F.cross_entropy(outputs["class"].float(), per_view_labels(labels, num_transforms))}

    def class_scores(self, outputs, num_transforms):
        return {"SI": outputs["class"][::num_transforms], "AG": views_mean(outputs["class"], num_transforms)}


class MultiTask(TransformsAsAugmentation):
    """`mt`: N-way class head plus an M-way transform head on every view."""
    name = "mt"

    def head_specs(self, num_classes, num_transforms):
        return [HeadSpec("class", num_classes, ALL_VIEWS), HeadSpec("transform", num_transforms, ALL_VIEWS)]

    def losses(self, outputs, labels, num_transforms):
        class_ce = F.cross_entropy(outputs["class"].float(), per_view_labels(labels, num_transforms))
        targets = transform_labels(labels.shape[0], num_transforms, labels.device)
        transform_ce = F.cross_entropy(outputs["transform"].float(), targets)
        return {"loss": class_ce + transform_ce, "class_ce": class_ce, "transform_ce": transform_ce}


class SLA(Method):
    """Joint N·M head trained on the joint labels y·M + j."""
    name, primary_score = "sla", "AG"

    def head_specs(self, num_classes, num_transforms):
        return [HeadSpec("joint", num_classes * num_transforms, ALL_VIEWS)]

    def sla_loss(self, outputs, labels, num_transforms):
        return kernels.joint_cross_entropy(outputs["joint"], labels, num_transforms,
                                           sum_over_transforms=self.options.sum_over_transforms,
                                           backend=self.options.kernel_backend)

    def losses(self, outputs, labels, num_transforms):
        return {"loss": self.sla_loss(outputs, labels, num_transforms)}

    def class_scores(self, outputs, num_transforms):
        joint = outputs["joint"]
        return {"SI": kernels.single_view_logits(joint, num_transforms),
                "AG": kernels.aggregate_logits(joint, num_transforms, backend=self.options.kernel_backend)}


class SLASelfDistillation(SLA):
    """SLA+SD: L_SLA + T²·KL(softmax(s/T).detach() ‖ softmax(c/T)) + β·CE(c, y)."""
    name, primary_score = "sla_sd", "SD"

    def head_specs(self, num_classes, num_transforms):
        return super().head_specs(num_classes, num_transforms) + [HeadSpec("sd", num_classes, IDENTITY_VIEW)]

    def losses(self, outputs, labels, num_transforms):
        sla = self.sla_loss(outputs, labels, num_transforms)
        aggregated = kernels.aggregate_logits(outputs["joint"].detach(), num_transforms,
                                              backend=self.options.kernel_backend)
        distill = kernels.distillation_kl(outputs["sd"], aggregated, temperature=self.options.temperature,
                                          backend=self.options.kernel_backend)
        sd_ce = F.cross_entropy(outputs["sd"].float(), labels)
        return {"loss": sla + distill + self.options.sd_weight * sd_ce, "sla": sla, "distill": distill,
                "sd_ce": sd_ce}

    def class_scores(self, outputs, num_transforms):
        return {"SD": outputs["sd"], **super().class_scores(outputs, num_transforms)}
