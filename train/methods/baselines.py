"""The baselines the SLA paper compares with (docs/methods.md, "Baselines"): plain cross-entropy on
the identity view, transformations as data augmentation, and multi-task heads."""
from __future__ import annotations

import torch.nn.functional as F

from kernels import upcast
from models import ALL_VIEWS, IDENTITY_VIEW, HeadSpec, MultiHeadNetwork, build_backbone
from train.methods.base import Method, identity_rows, per_view_labels, transform_labels, views_mean


class HeadsMethod(Method):
    """A backbone with named linear heads (models.MultiHeadNetwork)."""

    def head_specs(self, num_classes: int) -> list[HeadSpec]:
        raise NotImplementedError

    def network(self, model_name, num_classes):
        return MultiHeadNetwork(build_backbone(model_name), self.head_specs(num_classes), self.num_transforms)


class Baseline(HeadsMethod):
    """Plain CE on the identity view with an N-way head."""
    name, uses_transforms = "baseline", False

    def head_specs(self, num_classes):
        return [HeadSpec("class", num_classes, IDENTITY_VIEW)]

    def losses(self, outputs, labels):
        return {"loss": F.cross_entropy(upcast(outputs["class"]), labels)}

    def class_scores(self, outputs):
        return {"SI": outputs["class"]}

    def score_names(self):
        return ("SI",)


class TransformsAsAugmentation(HeadsMethod):
    """`da`: every view labelled with its class, N-way head."""
    name, primary_score = "da", "AG"

    def head_specs(self, num_classes):
        return [HeadSpec("class", num_classes, ALL_VIEWS)]

    def losses(self, outputs, labels):
        return {"loss": F.cross_entropy(upcast(outputs["class"]), per_view_labels(labels, self.num_transforms))}

    def class_scores(self, outputs):
        return {"SI": identity_rows(outputs["class"], self.num_transforms),
                "AG": views_mean(outputs["class"], self.num_transforms)}

    def score_names(self):
        return ("SI", "AG")


class MultiTask(TransformsAsAugmentation):
    """`mt`: N-way class head plus an M-way transform head on every view."""
    name = "mt"

    def head_specs(self, num_classes):
        return [HeadSpec("class", num_classes, ALL_VIEWS), HeadSpec("transform", self.num_transforms, ALL_VIEWS)]

    def losses(self, outputs, labels):
        class_ce = F.cross_entropy(upcast(outputs["class"]), per_view_labels(labels, self.num_transforms))
        targets = transform_labels(labels.shape[0], self.num_transforms, labels.device)
        transform_ce = F.cross_entropy(upcast(outputs["transform"]), targets)
        return {"loss": class_ce + transform_ce, "class_ce": class_ce, "transform_ce": transform_ce}
