"""Contrastive self-supervised pretraining (docs/methods.md, "Self-supervised family"): `simclr`, `moco_v2`
and `byol`, on stochastic views made for the whole batch on the training device (pipeline/random_views.py).

The training loader yields V = 2 random views per image (rows b·2 + v); labels are not used for training.
Evaluation is a weighted k-NN monitor on the backbone's frozen features: before each evaluation the
method embeds the training split (identity views) into a bank, and a validation image's class scores are
its k nearest bank features' votes (k = `--knn-k`, temperature `--knn-temperature`, cosine).

MoCo v2's key encoder and BYOL's target network are exponential moving averages of the trained network;
they are the method's state (in checkpoints), outside the optimizer, and receive no gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import copy
import math

import torch
import torch.nn as nn

from models import build_backbone
from pipeline.random_views import get_recipe
from pipeline.sharding import QUEUE_STREAM, SHUFFLE_STREAM, derived_seed
from train.methods.base import Method
from train.methods.contrastive_losses import (ONE_PROCESS, Ranks, gather_with_gradient, info_nce, knn_scores,
                                              normalised_mse, nt_xent, symmetric_key_loss)
from train.options import AT_LEAST_0, AT_LEAST_1, Limit, POSITIVE, field


@dataclass
class ContrastiveOptions:
    """The "contrastive: simclr, simclr_v2, moco_v2, moco_v3, byol" settings (TrainConfig composes every family's)."""
    HELP_GROUP: ClassVar[str] = "contrastive: simclr, simclr_v2, moco_v2, moco_v3, byol"
    views: str = field(default="", metadata={
        "resume": True, "help": "contrastive methods: the random-view recipe (simclr, byol, moco_v2, dim; default: "
                "the method's own)"})
    projector_hidden: int = field(default=2048, metadata={
        "limit": AT_LEAST_1, "resume": True, "help": "contrastive: projector (and BYOL predictor) hidden width"})
    projector_dim: int = field(default=256, metadata={
        "limit": AT_LEAST_1, "resume": True, "help": "contrastive: projection dimension"})
    contrastive_temperature: float = field(default=0.0, metadata={
        "limit": AT_LEAST_0, "help": "contrastive τ of NT-Xent / InfoNCE; 0 takes the method's (SimCLR 0.5, MoCo v2 "
                "0.2)"})
    target_momentum: float = field(default=0.99, metadata={
        "limit": Limit(0, 1), "help": "moco_v2: key encoder EMA m; byol, moco_v3: the base of its cosine schedule to "
                "1; simclr_v2: its memory's momentum network"})
    queue_size: int = field(default=4096, metadata={
        "limit": AT_LEAST_1, "resume": True, "help": "moco_v2: negatives kept in the queue"})
    shuffle_bn: bool = field(default=True, metadata={
        "help": "moco_v2 under torchrun: the key encoder sees the global batch shuffled across ranks (MoCo's "
                "shuffling BN), so no query shares BatchNorm statistics with its own key's batch"})
    memory_size: int = field(default=0, metadata={
        "limit": AT_LEAST_0, "resume": True, "help": "simclr_v2: past momentum-network projections kept as extra "
                "negatives (MoCo's memory); 0: none"})
    frozen_patch_projection: bool = field(default=False, metadata={
        "help": "moco_v3 with a ViT: keep the patch projection at its random initialisation (MoCo v3's trick)"})
    knn_k: int = field(default=200, metadata={
        "limit": AT_LEAST_1, "help": "k-NN monitor: neighbours that vote"})
    knn_temperature: float = field(default=0.1, metadata={
        "limit": POSITIVE, "help": "k-NN monitor: vote weight exp(cos/T)"})




def mlp(widths: list[int], norm: bool = True, bias: bool = True, last: nn.Module | None = None) -> nn.Sequential:
    """Linear layers through `widths` (inputs, hidden…, outputs), [BN →] ReLU between two of them, then `last`
    (a BN the reference ends with, or nothing). Each method's heads are the ones its reference code builds."""
    layers: list[nn.Module] = []
    for index, (inputs, outputs) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(inputs, outputs, bias=bias))
        if index < len(widths) - 2:
            layers += [nn.BatchNorm1d(outputs)] if norm else []
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers, *([last] if last is not None else []))


def scale_only_batch_norm(width: int) -> nn.BatchNorm1d:
    """google-research/simclr's last projector layer: BN with a learned scale and no shift (`center=False`)."""
    norm = nn.BatchNorm1d(width)
    norm.bias.requires_grad_(False)
    return norm


class ContrastiveNetwork(nn.Module):
    """backbone → features h (what evaluation uses) → projector → z; BYOL and MoCo v3 add a predictor → p."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(views)
        if not self.training:
            return {"features": features}  # evaluation needs only h
        projection = self.projector(features)
        outputs = {"features": features, "projection": projection}
        if self.predictor is not None:
            outputs["prediction"] = self.predictor(projection)
        return outputs


class ContrastiveMethod(Method):
    uses_transforms = False  # evaluation sees the identity view; training views come from `view_recipe`
    primary_score = "kNN"
    view_recipe = "simclr"
    default_temperature = 0.5
    needs_training_features = True  # the k-NN bank
    pairs_views = True  # rows 2b and 2b+1 are a positive pair: the recipe must make exactly two views an image

    def __init__(self, config):
        super().__init__(config)
        if config.transforms not in ("none", "rotation"):  # rotation: the trainer's default, unused here
            raise ValueError(f"{self.name} draws random views (--views); --transforms {config.transforms} is not "
                             "combined with it (use --transforms none)")
        recipe = self.training_view_recipe() if self.pairs_views else ""  # SwAV's needs the data's size first
        if recipe and len(get_recipe(recipe)) != 2:
            raise ValueError(f"{self.name} pairs two views of each image, but --views {recipe} makes "
                             f"{len(get_recipe(recipe))}; use a two-view recipe such as {self.view_recipe}")
        self.temperature = config.contrastive_temperature or self.default_temperature
        self.bank: torch.Tensor | None = None
        self.bank_labels: torch.Tensor | None = None
        self.num_classes = 0

    def training_view_recipe(self) -> str:
        return self.config.views or self.view_recipe

    def build_model(self, model_name, num_classes, family, device, channels_last):
        self.num_classes = num_classes  # the k-NN vote's classes
        return super().build_model(model_name, num_classes, family, device, channels_last)

    def network(self, model_name, num_classes):
        backbone = build_backbone(model_name)
        return ContrastiveNetwork(backbone, self.projector(backbone), self.predictor(backbone))

    def projector(self, backbone: nn.Module) -> nn.Module:
        """google-research/simclr's head: Linear → BN → ReLU → Linear → BN with a scale and no shift (the
        Linear layers without bias: a BN follows each). SimCLR v2's 3-layer head is this after its first layer,
        which its backbone holds."""
        hidden, dim = self.config.projector_hidden, self.config.projector_dim
        return mlp([backbone.feature_dim, hidden, dim], bias=False, last=scale_only_batch_norm(dim))

    def predictor(self, backbone: nn.Module) -> nn.Module | None:
        return None

    # ---- evaluation: k-NN on frozen features
    @torch.no_grad()
    def before_evaluation(self, model, bank_loader, autocast_context) -> None:
        """Embed the training split (identity views, evaluation mode) as the k-NN bank."""
        was_training = model.training
        model.eval()
        features, labels = [], []
        for batch in bank_loader:
            with autocast_context():
                features.append(torch.nn.functional.normalize(model(batch.views)["features"].float(), dim=1))
            labels.append(batch.labels)
        model.train(was_training)
        self.bank, self.bank_labels = torch.cat(features), torch.cat(labels)

    def class_scores(self, outputs):
        return {"kNN": knn_scores(outputs["features"], self.bank, self.bank_labels, self.num_classes,
                                  self.config.knn_k, self.config.knn_temperature)}

    def score_names(self):
        return ("kNN",)


class SimCLR(ContrastiveMethod):
    """NT-Xent over the 2B views, negatives from every rank (Chen et al. 2020)."""
    name = "simclr"

    def losses(self, outputs, labels):
        return {"loss": nt_xent(outputs["projection"], self.temperature, ranks=self.ranks)}


class EmaTarget(ContrastiveMethod):
    """A method with a momentum copy of the trained network (no gradient, updated after each step)."""
    cosine_momentum = False  # BYOL: the EMA coefficient rises to 1 on a cosine schedule

    @property
    def uses_target(self) -> bool:
        """SimCLR v2 keeps a momentum network only with its memory of negatives."""
        return True

    def make_step(self, step, total_steps):
        self.total_steps = total_steps  # BYOL's and MoCo v3's momentum schedule
        return step

    def build_model(self, model_name, num_classes, family, device, channels_last):
        model = super().build_model(model_name, num_classes, family, device, channels_last)
        self.target = copy.deepcopy(model).requires_grad_(False) if self.uses_target else None
        if self.target is not None:
            self.target.predictor = None  # BYOL's target has no predictor
        self.steps_done = 0
        return model

    def momentum(self) -> float:
        """The EMA coefficient for the step just taken: constant, or BYOL's cosine schedule to 1."""
        base = self.config.target_momentum
        if not self.cosine_momentum:
            return base
        progress = self.steps_done / max(1, self.total_steps)
        return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2

    def after_update(self, model: nn.Module, outputs: dict) -> None:
        """After the optimizer step: the momentum network's EMA (MoCo also enqueues this step's keys)."""
        if self.uses_target:
            self.update_target(model)

    @torch.no_grad()
    def update_target(self, model: nn.Module) -> None:
        m = self.momentum()
        online = dict(model.named_parameters())
        for name, target in self.target.named_parameters():
            target.mul_(m).add_(online[name].detach(), alpha=1 - m)
        online_buffers = dict(model.named_buffers())
        for name, buffer in self.target.named_buffers():
            buffer.copy_(online_buffers[name])
        self.steps_done += 1

    def forward(self, model, views):
        """The online network's outputs and, under "targets", the momentum network's projections of the views
        (no gradient), which `losses` reads and `after_update` may keep."""
        outputs = model(views)
        if self.uses_target:
            outputs["targets"] = self.target_projections(views)
        return outputs

    @torch.no_grad()
    def target_projections(self, views: torch.Tensor) -> torch.Tensor:
        self.target.train()  # batch statistics, as the papers' key/target forward
        return self.target.projector(self.target.backbone(views))

    def state_dict(self):
        if not self.uses_target:
            return {}
        return {"target": self.target.state_dict(), "steps_done": self.steps_done, **self.extra_state()}

    def extra_state(self) -> dict:
        return {}

    def load_state_dict(self, state):
        if not self.uses_target:
            return super().load_state_dict(state)
        self.target.load_state_dict(state["target"])
        self.steps_done = state["steps_done"]


class KeyQueue:
    """A ring buffer of unit keys from past steps (every rank's, in rank order): MoCo's queue, SimCLR v2's memory."""

    def __init__(self, size: int, dim: int, seed: int, device: torch.device, ranks: Ranks = ONE_PROCESS):
        keys = torch.randn(size, dim, generator=torch.Generator().manual_seed(derived_seed(seed, QUEUE_STREAM)))
        self.keys = torch.nn.functional.normalize(keys, dim=1).to(device)
        self.pointer = 0
        self.ranks = ranks

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Keys of this step replace the oldest ones."""
        keys = gather_with_gradient(keys, self.ranks)[0]
        size = self.keys.shape[0]
        pointer = (self.pointer + max(0, keys.shape[0] - size)) % size  # more keys than room: the newest
        keys = keys[-size:]
        positions = (pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys[positions] = keys
        self.pointer = int((pointer + keys.shape[0]) % size)

    def state(self) -> dict:
        return {"queue": self.keys, "queue_pointer": self.pointer}

    def load(self, state: dict) -> None:
        self.keys.copy_(state["queue"])
        self.pointer = state["queue_pointer"]


class MocoV2(EmaTarget):
    """MoCo v2 (Chen et al. 2020): query = view 0 through the trained network, key = view 1 through the
    momentum encoder, a queue of `--queue-size` past keys as negatives. BN: per rank; under torchrun the
    keys are computed on the global batch shuffled across ranks (`--shuffle-bn`, MoCo's own remedy for
    BN's intra-batch leak; a single process computes its keys on its own batch)."""
    name, view_recipe, default_temperature = "moco_v2", "moco_v2", 0.2

    def projector(self, backbone):
        """facebookresearch/moco's `--mlp` head: Linear → ReLU → Linear, no BatchNorm."""
        return mlp([backbone.feature_dim, self.config.projector_hidden, self.config.projector_dim], norm=False)

    def build_model(self, model_name, num_classes, family, device, channels_last):
        model = super().build_model(model_name, num_classes, family, device, channels_last)
        self.queue = KeyQueue(self.config.queue_size, self.config.projector_dim, self.config.seed, device, self.ranks)
        return model

    def losses(self, outputs, labels):
        return {"loss": info_nce(outputs["projection"], outputs["targets"], self.queue.keys, self.temperature)}

    def after_update(self, model, outputs):
        super().after_update(model, outputs)
        self.queue.enqueue(torch.nn.functional.normalize(outputs["targets"].float(), dim=1))  # this step's keys

    @torch.no_grad()
    def shuffled_key_projections(self, key_views: torch.Tensor) -> torch.Tensor:
        """The keys of this rank's images, each computed on the shard of a permutation of the global batch
        that the same (seed, step) gives every rank, then put back in order (MoCo's batch shuffle)."""
        if not self.config.shuffle_bn or self.ranks.world_size == 1:
            return self.target_projections(key_views)
        everyone, offset = gather_with_gradient(key_views, self.ranks)
        order = torch.randperm(everyone.shape[0], generator=torch.Generator().manual_seed(
            derived_seed(self.config.seed, self.steps_done, SHUFFLE_STREAM))).to(everyone.device)
        shard = everyone[order[offset:offset + key_views.shape[0]]]
        if key_views.dim() == 4 and key_views.stride(1) == 1:  # channels_last, as the loader made them
            shard = shard.contiguous(memory_format=torch.channels_last)
        keys, _ = gather_with_gradient(self.target_projections(shard), self.ranks)
        in_order = torch.empty_like(keys)
        in_order[order] = keys
        return in_order[offset:offset + key_views.shape[0]]

    def forward(self, model, views):
        outputs = model(views[0::2])  # only view 0 is a query; view 1's key comes from the momentum encoder
        outputs["targets"] = self.shuffled_key_projections(views[1::2])
        return outputs

    def extra_state(self):
        return self.queue.state()

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.queue.load(state)


class BYOL(EmaTarget):
    """BYOL (Grill et al. 2020): the online network's prediction of each view regresses the target network's
    projection of the other view (normalised MSE, symmetric); target momentum on the paper's cosine schedule."""
    name, view_recipe, cosine_momentum = "byol", "byol", True

    def projector(self, backbone):
        """The paper's projector and predictor: Linear → BN → ReLU → Linear."""
        return mlp([backbone.feature_dim, self.config.projector_hidden, self.config.projector_dim])

    def predictor(self, backbone):
        dim = self.config.projector_dim
        return mlp([dim, self.config.projector_hidden, dim])

    def losses(self, outputs, labels):
        targets = outputs["targets"]
        predictions = outputs["prediction"]
        swapped = targets.view(-1, 2, targets.shape[1]).flip(1).reshape_as(targets)  # row b·2+v ← view 1−v
        return {"loss": 2 * normalised_mse(predictions, swapped)}  # both directions: mean over 2B pairs, ×2


class SimclrV2(EmaTarget):
    """SimCLR v2 (Chen et al. 2020b): SimCLR with a 3-layer projector whose first layer's output is the
    representation (the k-NN monitor's features, and what `--init-from`/`--pretrained` carry: its
    checkpoints hold a `<model>+mlp<hidden>` backbone, the network plus that layer), and, with
    `--memory-size K`, MoCo's memory: a momentum network's projections of past steps' views join the
    in-batch negatives of NT-Xent."""
    name = "simclr_v2"

    @property
    def uses_target(self) -> bool:
        return self.config.memory_size > 0

    @property
    def backbone_name(self) -> str:
        return f"{self.config.model}+mlp{self.config.projector_hidden}"  # the projector's first layer included

    def network(self, model_name, num_classes):
        backbone = build_backbone(f"{model_name}+mlp{self.config.projector_hidden}")
        return ContrastiveNetwork(backbone, self.projector(backbone))

    def build_model(self, model_name, num_classes, family, device, channels_last):
        model = super().build_model(model_name, num_classes, family, device, channels_last)
        self.memory = None
        if self.uses_target:
            self.memory = KeyQueue(self.config.memory_size, self.config.projector_dim, self.config.seed, device,
                                   self.ranks)
        return model

    def losses(self, outputs, labels):
        memory = self.memory.keys if self.memory is not None else None
        return {"loss": nt_xent(outputs["projection"], self.temperature, memory, self.ranks)}

    def after_update(self, model, outputs):
        super().after_update(model, outputs)
        if self.memory is not None:  # this step's momentum projections join the memory
            self.memory.enqueue(torch.nn.functional.normalize(outputs["targets"].float(), dim=1))

    def extra_state(self):
        return self.memory.state()

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.memory is not None:
            self.memory.load(state)


class MocoV3(EmaTarget):
    """MoCo v3 (Chen, Xie, He 2021): no queue; each view's prediction (online network: backbone, projector,
    predictor) against the other view's momentum key among every key of the global
    batch, symmetric, each InfoNCE ×2τ; the momentum rises from `--target-momentum` to 1 on BYOL's cosine
    schedule. Meant for ViTs (`--model vit_small`, `--frozen-patch-projection`, `--optimizer adamw`);
    any backbone works."""
    name, cosine_momentum, default_temperature = "moco_v3", True, 0.2

    def network(self, model_name, num_classes):
        network = super().network(model_name, num_classes)
        if self.config.frozen_patch_projection:
            if not is_vit(network.backbone):
                raise ValueError(f"--frozen-patch-projection needs a ViT backbone; {model_name} has no patch "
                                 "projection")
            network.backbone.patch_embed.requires_grad_(False)
        return network

    def projector(self, backbone):
        """facebookresearch/moco-v3's heads (Linear layers without bias): on a ViT a 3-layer projector, on a
        ResNet a 2-layer one, each ending in BN without affine."""
        hidden, dim = self.config.projector_hidden, self.config.projector_dim
        inner = [hidden, hidden] if is_vit(backbone) else [hidden]
        return mlp([backbone.feature_dim, *inner, dim], bias=False, last=nn.BatchNorm1d(dim, affine=False))

    def predictor(self, backbone):
        """A 2-layer predictor, ending in BN without affine on a ViT (MoCo_ViT) and in its Linear on a ResNet."""
        hidden, dim = self.config.projector_hidden, self.config.projector_dim
        return mlp([dim, hidden, dim], bias=False, last=nn.BatchNorm1d(dim, affine=False) if is_vit(backbone) else None)

    def losses(self, outputs, labels):
        keys = outputs["targets"]
        predictions = outputs["prediction"]
        loss = (symmetric_key_loss(predictions[0::2], keys[1::2], self.temperature, self.ranks)
                + symmetric_key_loss(predictions[1::2], keys[0::2], self.temperature, self.ranks))
        return {"loss": loss}


def is_vit(backbone: nn.Module) -> bool:
    return hasattr(backbone, "patch_embed")
