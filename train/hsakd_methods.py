"""HSAKD as registry entries (methods.md, "HSAKD"): a teacher with a joint classifier after every
stage, a student distilled from a frozen teacher, and two networks distilling each other online.
The losses are train/hsakd.py's; the reported score (SI) is the backbone head on the identity view."""
from __future__ import annotations

import torch

from models import build_backbone
from models.hsakd import HsakdNetwork, MutualPair
from pipeline.phases import phase
from train import hsakd
from train.methods import Method, place
from train.teacher import load_frozen_backbone, load_teacher


class HsakdMethod(Method):
    """One HSAKD network trained; `record` holds the provenance of the checkpoint it builds on."""

    def __init__(self, options):
        super().__init__(options)
        self.record: dict = {}

    def class_scores(self, outputs, num_transforms):
        return hsakd.class_scores(outputs, num_transforms)

    def provenance(self):
        return self.record


class HsakdTeacher(HsakdMethod):
    """Σ_l CE(q_l, joint labels) + CE(p, y); with --frozen-backbone only the branches learn."""
    name = "hsakd_teacher"

    def build_model(self, model_name, num_classes, family, device, channels_last):
        network = HsakdNetwork(build_backbone(model_name), num_classes, family.num_transforms)
        if self.options.frozen_backbone:
            self.record = load_frozen_backbone(network, self.options.frozen_backbone, model_name)
        return place(network, device, channels_last)

    def losses(self, outputs, labels, num_transforms):
        return hsakd.teacher_losses(outputs, labels, num_transforms, backbone_frozen=bool(self.options.frozen_backbone),
                                    backend=self.options.kernel_backend)


class HsakdStudent(HsakdMethod):
    """CE(p_S, y) + τ²·KL to the frozen teacher's head and every branch, on all B·M rows."""
    name = "hsakd_student"

    def __init__(self, options):
        super().__init__(options)  # the settings are checked here, before any data is read
        if not options.teacher:
            raise ValueError("--method hsakd_student needs --teacher CKPT: the best.pt or last.pt of a "
                             "--method hsakd_teacher run")
        if options.frozen_backbone:
            raise ValueError("--frozen-backbone is for --method hsakd_teacher; a student trains its whole network")

    def build_model(self, model_name, num_classes, family, device, channels_last):
        student = HsakdNetwork(build_backbone(model_name), num_classes, family.num_transforms)
        teacher, self.record = load_teacher(self.options.teacher, num_classes, family, self.options.teacher_model)
        if len(teacher.branches) != len(student.branches):
            raise ValueError(f"the teacher {self.record['teacher_model']} has {len(teacher.branches)} stages, the "
                             f"student {model_name} {len(student.branches)}; HSAKD pairs need the same number")
        # Not a submodule of the trained model: outside DDP, the optimizer, train() and the checkpoints.
        self.teacher = place(teacher, device, channels_last)
        return place(student, device, channels_last)

    def forward(self, model, views):
        with phase("teacher"), torch.no_grad():
            teacher_outputs = self.teacher(views)
        return {"student": model(views), "teacher": teacher_outputs}

    def losses(self, outputs, labels, num_transforms):
        return hsakd.student_losses(outputs["student"], outputs["teacher"], labels, num_transforms,
                                    temperature=self.options.kd_temperature, backend=self.options.kernel_backend)


class HsakdOnline(Method):
    """Two networks, each with the teacher loss plus τ²·KL to the other's detached head and branches."""
    name = "hsakd_online"

    def build_model(self, model_name, num_classes, family, device, channels_last):
        pair = MutualPair(*(HsakdNetwork(build_backbone(name), num_classes, family.num_transforms)
                            for name in (model_name, self.options.peer_model or model_name)))
        if len(pair.a.branches) != len(pair.b.branches):
            raise ValueError(f"--model {model_name} and --peer-model {self.options.peer_model} have different "
                             "numbers of stages; online HSAKD pairs need the same number")
        return place(pair, device, channels_last)

    def losses(self, outputs, labels, num_transforms):
        return hsakd.mutual_losses(outputs, labels, num_transforms, temperature=self.options.kd_temperature,
                                   backend=self.options.kernel_backend)

    def class_scores(self, outputs, num_transforms):
        """The first network's scores, and the peer's head as "peer"."""
        return {**hsakd.class_scores(outputs["a"], num_transforms), "peer": outputs["b"]["logits"][::num_transforms]}
