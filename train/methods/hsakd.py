"""HSAKD (Yang et al., IJCAI 2021; docs/methods.md, "HSAKD"): a teacher with a joint classifier after
every stage, a student distilled from a frozen teacher, and two networks distilling each other online.
The reported score (SI) is the backbone head on the identity view.

    teacher:  Σ_l mean_r CE(q_l[r], y[b]·M + j) + CE(p[b·M + 0], y[b])
    student:  CE(p_S[identity rows], y) + τ²·KL(p_T ‖ p_S) + Σ_l τ²·KL(q_T,l ‖ q_S,l)   (KL over all B·M rows)
    mutual:   each network's teacher loss + τ²·KL against the other's detached head and branches
    kd:       CE(p_S, y) + τ²·KL(p_T ‖ p_S) on the original images only (Hinton et al.; HSAKD's control)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

import kernels
from kernels import identity_rows, upcast
from models import IDENTITY_VIEW, HeadSpec, MultiHeadNetwork, build_backbone
from models.hsakd import HsakdNetwork, MutualPair
from pipeline import phases
from train.methods.base import Method, place
from train.methods.run_checkpoints import load_frozen_backbone, load_teacher
from train.options import POSITIVE, field


@dataclass
class HsakdOptions:
    """The "HSAKD: hsakd_teacher, hsakd_student, hsakd_online, kd" settings (TrainConfig composes every family's)."""
    HELP_GROUP: ClassVar[str] = "HSAKD: hsakd_teacher, hsakd_student, hsakd_online, kd"
    kd_temperature: float = field(default=3.0, metadata={
        "limit": POSITIVE, "resume": True, "help": "hsakd_student, hsakd_online, kd: distillation temperature τ"})
    teacher: str = field(default="", metadata={
        "help": "hsakd_student, kd: the teacher checkpoint (best.pt or last.pt of a --method hsakd_teacher run)"})
    teacher_model: str = field(default="", metadata={
        "help": "hsakd_student, kd: the architecture the teacher must be (presets set it; empty accepts any)"})
    frozen_backbone: str = field(default="", metadata={
        "help": "hsakd_teacher: a run checkpoint whose backbone and class head are frozen; only the branches learn"})
    peer_model: str = field(default="", metadata={
        "resume": True, "help": "hsakd_online: the second network (default: --model)"})


# ---------------------------------------------------------------------------- losses
def teacher_losses(outputs: dict, labels: torch.Tensor, num_transforms: int, *, backbone_frozen: bool = False,
                   loss_kernels) -> dict[str, torch.Tensor]:
    """`loss_kernels`: the run's bound kernels (kernels.for_device)."""
    branch_terms = [loss_kernels.joint_cross_entropy(q, labels, num_transforms) for q in outputs["branches"]]
    losses = {f"branch{l + 1}_ce": term for l, term in enumerate(branch_terms)}
    total = torch.stack(branch_terms).sum()
    if not backbone_frozen:  # a frozen backbone's head has nothing to learn
        losses["head_ce"] = F.cross_entropy(upcast(identity_rows(outputs["logits"], num_transforms)), labels)
        total = total + losses["head_ce"]
    return {"loss": total, **losses}


def distillation_terms(student: dict, teacher: dict, *, temperature: float, loss_kernels) -> dict:
    """τ²·KL of the head and of every branch, the teacher's side detached."""
    terms = {"head_kl": loss_kernels.distillation_kl(student["logits"], teacher["logits"].detach(), temperature)}
    for l, (q_student, q_teacher) in enumerate(zip(student["branches"], teacher["branches"])):
        terms[f"branch{l + 1}_kl"] = loss_kernels.distillation_kl(q_student, q_teacher.detach(), temperature)
    return terms


def student_losses(student: dict, teacher: dict, labels: torch.Tensor, num_transforms: int, *, temperature: float,
                   loss_kernels) -> dict[str, torch.Tensor]:
    if len(student["branches"]) != len(teacher["branches"]):
        raise ValueError(f"the student has {len(student['branches'])} branches, the teacher "
                         f"{len(teacher['branches'])}; HSAKD pairs need the same number of stages")
    head_ce = F.cross_entropy(upcast(identity_rows(student["logits"], num_transforms)), labels)
    terms = distillation_terms(student, teacher, temperature=temperature, loss_kernels=loss_kernels)
    return {"loss": head_ce + torch.stack(list(terms.values())).sum(), "head_ce": head_ce, **terms}


def mutual_losses(outputs: dict, labels: torch.Tensor, num_transforms: int, *, temperature: float,
                  loss_kernels) -> dict[str, torch.Tensor]:
    losses, total = {}, 0.0
    for me, other in (("a", "b"), ("b", "a")):
        own = teacher_losses(outputs[me], labels, num_transforms, loss_kernels=loss_kernels)
        terms = distillation_terms(outputs[me], outputs[other], temperature=temperature, loss_kernels=loss_kernels)
        part = own["loss"] + torch.stack(list(terms.values())).sum()
        losses[f"{me}_loss"] = part
        total = total + part
    return {"loss": total, **losses}


def class_scores(outputs: dict, num_transforms: int) -> dict[str, torch.Tensor]:
    """The backbone head on the identity view (the reported metric) and each branch's SI, for inspection."""
    scores = {"SI": identity_rows(outputs["logits"], num_transforms)}
    for l, q in enumerate(outputs["branches"]):
        scores[f"branch{l + 1}"] = kernels.single_view_logits(q, num_transforms)
    return scores


# ---------------------------------------------------------------------------- methods
class HsakdMethod(Method):
    """One HSAKD network trained; `record` holds the provenance of the checkpoint it builds on."""

    def __init__(self, config):
        super().__init__(config)
        self.record: dict = {}
        self.num_branches = 0

    def hsakd_network(self, model_name: str, num_classes: int) -> HsakdNetwork:
        network = HsakdNetwork(build_backbone(model_name), num_classes, self.num_transforms)
        self.num_branches = len(network.branches)
        return network

    def class_scores(self, outputs):
        return class_scores(outputs, self.num_transforms)

    def score_names(self):
        return ("SI", *(f"branch{l + 1}" for l in range(self.num_branches)))

    def provenance(self):
        return {**super().provenance(), **self.record}


class HsakdTeacher(HsakdMethod):
    """Σ_l CE(q_l, joint labels) + CE(p, y); with --frozen-backbone only the branches learn."""
    name = "hsakd_teacher"

    def network(self, model_name, num_classes):
        network = self.hsakd_network(model_name, num_classes)
        if self.config.frozen_backbone:
            self.record = load_frozen_backbone(network, self.config.frozen_backbone, model_name)
        return network

    def losses(self, outputs, labels):
        return teacher_losses(outputs, labels, self.num_transforms, backbone_frozen=bool(self.config.frozen_backbone),
                              loss_kernels=self.loss_kernels)


class HsakdStudent(HsakdMethod):
    """CE(p_S, y) + τ²·KL to the frozen teacher's head and every branch, on all B·M rows."""
    name = "hsakd_student"

    def __init__(self, config):
        super().__init__(config)  # the settings are checked here, before any data is read
        if not config.teacher:
            raise ValueError("--method hsakd_student needs --teacher CKPT: the best.pt or last.pt of a "
                             "--method hsakd_teacher run")
        if config.frozen_backbone:
            raise ValueError("--frozen-backbone is for --method hsakd_teacher; a student trains its whole network")

    def build_model(self, model_name, num_classes, family, device, channels_last):
        student = super().build_model(model_name, num_classes, family, device, channels_last)
        teacher, self.record = load_teacher(self.config.teacher, num_classes, family, self.config.teacher_model)
        if len(teacher.branches) != self.num_branches:
            raise ValueError(f"the teacher {self.record['teacher_model']} has {len(teacher.branches)} stages, the "
                             f"student {model_name} {self.num_branches}; HSAKD pairs need the same number")
        # Not a submodule of the trained model: outside DDP, the optimizer, train() and the checkpoints.
        self.teacher = place(teacher, device, channels_last)
        return student

    def network(self, model_name, num_classes):
        return self.hsakd_network(model_name, num_classes)

    def forward(self, model, views):
        with phases.phase("teacher"), torch.no_grad():
            teacher_outputs = self.teacher(views)
        return {"student": model(views), "teacher": teacher_outputs}

    def losses(self, outputs, labels):
        return student_losses(outputs["student"], outputs["teacher"], labels, self.num_transforms,
                              temperature=self.config.kd_temperature, loss_kernels=self.loss_kernels)


class PlainKD(HsakdStudent):
    """`kd`: Hinton et al.'s distillation, the control HSAKD compares with: CE(p_S, y) + τ²·KL(p_T ‖ p_S) on the
    original images, from the same hsakd_teacher checkpoint's class head and the same τ; the student is a plain
    network (no branches, no joint labels, no transformed views)."""
    name, uses_transforms = "kd", False

    def build_model(self, model_name, num_classes, family, device, channels_last):
        student = Method.build_model(self, model_name, num_classes, family, device, channels_last)
        teacher, self.record = load_teacher(self.config.teacher, num_classes, None, self.config.teacher_model)
        self.teacher = place(teacher, device, channels_last)  # outside DDP, the optimizer and the checkpoints
        return student

    def network(self, model_name, num_classes):
        return MultiHeadNetwork(build_backbone(model_name), [HeadSpec("class", num_classes, IDENTITY_VIEW)], 1)

    def losses(self, outputs, labels):
        student = outputs["student"]["class"]
        head_ce = F.cross_entropy(upcast(student), labels)
        head_kl = self.loss_kernels.distillation_kl(student, outputs["teacher"]["logits"].detach(),
                                                    self.config.kd_temperature)
        return {"loss": head_ce + head_kl, "head_ce": head_ce, "head_kl": head_kl}

    def class_scores(self, outputs):
        return {"SI": outputs["class"]}

    def score_names(self):
        return ("SI",)


class HsakdOnline(HsakdMethod):
    """Two networks, each with the teacher loss plus τ²·KL to the other's detached head and branches."""
    name = "hsakd_online"

    def network(self, model_name, num_classes):
        peer_name = self.config.peer_model or model_name
        pair = MutualPair(self.hsakd_network(model_name, num_classes),
                          HsakdNetwork(build_backbone(peer_name), num_classes, self.num_transforms))
        if len(pair.a.branches) != len(pair.b.branches):
            raise ValueError(f"--model {model_name} and --peer-model {self.config.peer_model} have different "
                             "numbers of stages; online HSAKD pairs need the same number")
        return pair

    def losses(self, outputs, labels):
        return mutual_losses(outputs, labels, self.num_transforms, temperature=self.config.kd_temperature,
                             loss_kernels=self.loss_kernels)

    def class_scores(self, outputs):
        """The first network's scores, and the peer's head as "peer"."""
        return {**class_scores(outputs["a"], self.num_transforms),
                "peer": identity_rows(outputs["b"]["logits"], self.num_transforms)}

    def score_names(self):
        return (*super().score_names(), "peer")
