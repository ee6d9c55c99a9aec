"""MAXL, meta auxiliary learning (docs/methods.md, "MAXL"): `maxl` trains a learner θ1 on the primary
labels and on auxiliary labels that a generator θ2 produces, θ2 learning by the meta step of
train/methods/maxl_meta.py; `maxl_human` trains the same learner on given fine labels instead.

Schedule (paper's Algorithm 1): every epoch is a pass updating θ1 with θ2's labels fixed, then a pass
updating θ2 (`passes_per_epoch` = 2, the loader reshuffled for each); `--maxl-interleave` does both
updates on every batch. Both learning-rate schedules follow the run's steps, so their milestones fall
at the same epochs as the paper's.
"""
from __future__ import annotations

from typing import ClassVar

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models import build_backbone
from models.maxl import LabelGenerator, MaxlLearner
from pipeline.batch import Batch
from pipeline import phases
from pipeline.sharding import AUX_LABEL_STREAM, derived_seed
from train.methods.base import Method, place
from train.methods.maxl_losses import ClassBlocks, focal_loss, mask_softmax, negative_entropy
from train.methods.maxl_meta import META_GRADIENTS, ORDERS, MetaSettings, objective_for
from train.options import AT_LEAST_0, field


@dataclass
class MaxlOptions:
    """The "MAXL: maxl, maxl_human, maxl_random" settings (TrainConfig composes every family's)."""
    HELP_GROUP: ClassVar[str] = "MAXL: maxl, maxl_human, maxl_random"
    aux_per_class: str = field(default="5", metadata={
        "resume": True, "help": "maxl: auxiliary labels ψ per primary class, one number for all or a comma-separated "
                "list"})
    generator_model: str = field(default="", metadata={
        "resume": True, "help": "maxl: the label generator's backbone (default: --model)"})
    focal_gamma: float = field(default=2.0, metadata={
        "limit": AT_LEAST_0, "help": "maxl, maxl_human, maxl_random: focal loss γ on the primary and auxiliary targets; 0 is "
                "cross-entropy"})
    entropy_weight: float = field(default=0.2, metadata={
        "limit": AT_LEAST_0, "help": "maxl: weight λ of the generated labels' negative batch entropy in θ2's "
                "objective"})
    maxl_order: str = field(default="second", metadata={
        "help": "maxl: meta-gradient through the look-ahead step, second (exact) or first (finite differences)"})
    maxl_meta_gradient: str = field(default="forward", metadata={
        "help": "maxl, --maxl-order second: forward (a forward-mode Jacobian-vector product, no double backward) or "
                "graph (create_graph through the look-ahead step, the official code's way); the same exact gradient"})
    maxl_interleave: bool = field(default=False, metadata={
        "resume": True, "help": "maxl: update θ1 and θ2 on every batch instead of the paper's pass of θ1, then pass "
                "of θ2"})
    generator_lr: float = field(default=0.001, metadata={
        "limit": AT_LEAST_0, "help": "maxl: the generator's peak SGD learning rate (no momentum, as the paper; same "
                "schedule as --lr)"})
    generator_weight_decay: float = field(default=0.0005, metadata={
        "limit": AT_LEAST_0, "help": "maxl: the generator's L2 coefficient"})
    log_grad_similarity: bool = field(default=False, metadata={
        "help": "maxl, maxl_human, maxl_random: log cos(∇L_pri, ∇L_aux) over the shared backbone, averaged over each logging "
                "interval (an extra backward pass per step)"})


LEARNER, GENERATOR, BOTH = "learner", "generator", "both"


def aux_sizes(text: str, num_classes: int) -> list[int]:
    """--aux-per-class: one ψ for every class ("5") or one per class ("3,5,2")."""
    try:
        sizes = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--aux-per-class must be an integer or a comma-separated list of integers, "
                         f"got {text!r}") from None
    if len(sizes) == 1:
        sizes = sizes * num_classes
    if len(sizes) != num_classes:
        raise ValueError(f"--aux-per-class lists {len(sizes)} values but the data has {num_classes} primary classes")
    if min(sizes) < 1:
        raise ValueError(f"--aux-per-class: every class needs ψ_c ≥ 1, got {sizes}")
    return sizes


class MaxlHuman(Method):
    """`maxl_human`: the learner's auxiliary head learns given fine labels (the paper's "human" baseline);
    the data's primary labels must be a grouping (`--primary-labels coarse` or groups of class ids)."""
    name, uses_transforms = "maxl_human", False

    def __init__(self, config):
        super().__init__(config)
        if config.transforms not in ("none", "rotation"):  # rotation: the trainer's default, unused here
            raise ValueError(f"{self.name} trains on the identity view; --transforms {config.transforms} "
                             "is not combined with MAXL (use --transforms none)")
        self.blocks: ClassBlocks | None = None
        self.fine_labels: torch.Tensor | None = None  # per training image, in block order

    def see_data(self, splits) -> None:
        if splits.train.fine_labels is None:
            raise ValueError(f"{self.name} needs fine labels under grouped primary labels: pass --primary-labels "
                             "coarse (CIFAR-100) or a grouping of class ids such as 0,1,2/3,4/5,6,7,8,9")
        self.blocks = ClassBlocks(splits.group_sizes)
        self.fine_labels = torch.as_tensor(splits.train.fine_labels)

    def network(self, model_name, num_classes):
        return MaxlLearner(build_backbone(model_name), num_classes, self.blocks.num_aux)

    def auxiliary_targets(self, batch) -> torch.Tensor:
        """Class indices of the fine labels of the batch's images."""
        if self.fine_labels.device != batch.labels.device:  # once: the table then stays on the device
            self.fine_labels = self.fine_labels.to(batch.labels.device)
        return self.fine_labels[batch.indices]

    def learner_losses(self, outputs, labels, aux_targets) -> dict[str, torch.Tensor]:
        gamma = self.config.focal_gamma
        primary = focal_loss(outputs["primary"], labels, gamma)
        auxiliary = focal_loss(outputs["auxiliary"], aux_targets, gamma)
        return {"loss": primary + auxiliary, "primary": primary, "auxiliary": auxiliary}

    def losses(self, outputs, labels):
        raise RuntimeError(f"{self.name} runs its own step (make_step)")

    def class_scores(self, outputs):
        return {"SI": outputs["primary"]}

    def score_names(self):
        return ("SI",)

    def make_step(self, step, total_steps):
        return MaxlStep(step, self)

    def advance_generator_schedule(self) -> None:
        """After every batch: the generator's schedule follows the run's steps (maxl_human has no generator)."""



class MaxlRandom(MaxlHuman):
    """`maxl_random`: MAXL's random-label control: each training image gets one auxiliary label drawn uniformly
    from its primary class's ψ labels (as many as `maxl_human` has), fixed for the run (seeded by --seed)."""
    name = "maxl_random"

    def see_data(self, splits) -> None:
        super().see_data(splits)
        primary = torch.as_tensor(splits.train.labels)
        draws = torch.rand(len(primary), generator=torch.Generator().manual_seed(
            derived_seed(self.config.seed, AUX_LABEL_STREAM)), dtype=torch.float64)
        offsets = (draws * self.blocks.sizes[primary]).long()  # uniform in [0, ψ_c)
        self.fine_labels = self.blocks.starts[primary] + offsets

class Maxl(MaxlHuman):
    """`maxl`: auxiliary labels from the generator θ2, trained by the meta step."""
    name = "maxl"

    def __init__(self, config):
        super().__init__(config)
        if config.maxl_order not in ORDERS:
            raise ValueError(f"unknown --maxl-order {config.maxl_order!r}; valid: {', '.join(ORDERS)}")
        if config.maxl_meta_gradient not in META_GRADIENTS:
            raise ValueError(f"unknown --maxl-meta-gradient {config.maxl_meta_gradient!r}; "
                             f"valid: {', '.join(META_GRADIENTS)}")
        if config.precision == "fp16":  # a GradScaler scales the learner's loss, not the meta-objective
            raise ValueError("maxl refuses --precision fp16: the label generator's meta-gradient has no loss "
                             "scaling, so fp16 gradients could underflow or overflow unseen; use bf16 or fp32")
        self.objective = objective_for(config.maxl_order, config.maxl_meta_gradient)
        self.generator: LabelGenerator | None = None
        self.train_generator = None  # what the meta step calls: the generator, DDP-wrapped under torchrun
        self.generator_optimizer = None
        self.generator_scheduler = None

    @property
    def passes_per_epoch(self) -> int:
        return 1 if self.config.maxl_interleave else 2

    def see_data(self, splits) -> None:
        self.blocks = ClassBlocks(aux_sizes(self.config.aux_per_class, splits.num_classes))

    def build_model(self, model_name, num_classes, family, device, channels_last):
        learner = super().build_model(model_name, num_classes, family, device, channels_last)
        backbone = build_backbone(self.config.generator_model or model_name)
        self.generator = place(LabelGenerator(backbone, self.blocks.num_aux), device, channels_last)
        self.train_generator = self.generator
        self.generator_optimizer = torch.optim.SGD(self.generator.parameters(), lr=self.config.generator_lr,
                                                   weight_decay=self.config.generator_weight_decay)
        return learner

    def make_step(self, step, total_steps):
        from train.optim import build_scheduler

        if self.ranks.world_size > 1:
            # Each rank takes the look-ahead step with its own shard's θ1 gradient; DDP averages θ2's meta-gradients.
            device = next(self.generator.parameters()).device
            self.train_generator = torch.nn.parallel.DistributedDataParallel(
                self.generator, device_ids=[device.index] if device.type == "cuda" else None)
        self.generator_scheduler = build_scheduler(self.config, self.generator_optimizer, total_steps)
        return MaxlStep(step, self)

    def epoch_batches(self, loader, epoch: int):
        """Each batch tagged with the update it feeds (`PassBatch.update`): both with --maxl-interleave, else
        Algorithm 1's θ1 pass over the data, then θ2's."""
        if self.config.maxl_interleave:
            yield from (PassBatch.of(batch, BOTH) for batch in super().epoch_batches(loader, epoch))
            return
        for index, name in enumerate((LEARNER, GENERATOR)):
            yield from (PassBatch.of(batch, name) for batch in super().epoch_batches(loader, 2 * epoch + index))

    def advance_generator_schedule(self) -> None:
        with warnings.catch_warnings():  # in θ1's pass θ2's schedule advances before θ2's first step, on purpose
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.generator_scheduler.step()

    def auxiliary_targets(self, batch) -> torch.Tensor:
        return mask_softmax(self.generator(batch.views), batch.labels, self.blocks)

    def learner_losses(self, outputs, labels, aux_targets):
        losses = super().learner_losses(outputs, labels, aux_targets)
        losses["label_entropy"] = -negative_entropy(aux_targets.float())
        return losses

    def meta_objective(self, learner, views, labels, lr: float):
        settings = MetaSettings(lr, self.config.focal_gamma, self.config.entropy_weight, self.blocks,
                                contiguous=views.device.type == "cpu" and self.config.maxl_meta_gradient == "graph")
        return self.objective(learner, self.train_generator(views), views, labels, settings)

    def evaluation_hits(self, outputs, batch):
        was_training = self.generator.training
        self.generator.eval()
        generated = mask_softmax(self.generator(batch.views), batch.labels, self.blocks)
        self.generator.train(was_training)
        return {"aux_agreement": outputs["auxiliary"].argmax(dim=1) == generated.argmax(dim=1)}

    def score_names(self):
        return ("SI", "aux_agreement")

    def state_dict(self):
        return {"generator": self.generator.state_dict(), "generator_optimizer": self.generator_optimizer.state_dict(),
                "generator_scheduler": self.generator_scheduler.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {"generator", "generator_optimizer", "generator_scheduler"}:
            raise ValueError(f"the --resume checkpoint has no MAXL generator state (holds {sorted(state)})")
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.generator_scheduler.load_state_dict(state["generator_scheduler"])


def gradient_cosine(primary: torch.Tensor, auxiliary: torch.Tensor, shared: list[torch.Tensor]) -> torch.Tensor:
    """cos(∇ L_pri, ∇ L_aux) over the shared layers' parameters (the paper's "usefulness" of the task)."""
    first = torch.autograd.grad(primary, shared, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(auxiliary, shared, retain_graph=True, allow_unused=True)
    pairs = [(a.flatten().float(), b.flatten().float()) for a, b in zip(first, second) if a is not None and b is not None]
    return F.cosine_similarity(torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs]), dim=0)


@dataclass
class PassBatch(Batch):
    """A training batch and the update it feeds: LEARNER (θ1), GENERATOR (θ2's meta step) or BOTH."""
    update: str = LEARNER

    @classmethod
    def of(cls, batch: Batch, update: str) -> "PassBatch":
        return cls(batch.views, batch.labels, batch.indices, update)


class MaxlStep:
    """One MAXL step on a batch: θ1's update, θ2's meta update, or both, as the method's pass says."""

    def __init__(self, base, method: MaxlHuman):
        self.base = base  # train.step.TrainStep: θ1's model, optimizer, schedule, scaler and EMA
        self.method = method

    def __call__(self, batch) -> dict[str, torch.Tensor]:
        which = getattr(batch, "update", LEARNER)  # maxl_human's plain batches feed θ1 alone
        losses = {}
        if which in (LEARNER, BOTH):
            losses.update(self.update_learner(batch))
        if which in (GENERATOR, BOTH):
            losses.update(self.update_generator(batch))
            if which == GENERATOR:
                losses["loss"] = losses["meta_loss"]  # the pass's loss line: θ2's objective
                self.base.scheduler.step()  # θ1's schedule follows the run's steps through θ2's pass too
        self.method.advance_generator_schedule()
        return losses

    def update_learner(self, batch) -> dict[str, torch.Tensor]:
        base = self.base
        with phases.phase("forward"), base.autocast():
            outputs = base.train_model(batch.views)
            with torch.no_grad():
                aux_targets = self.method.auxiliary_targets(batch)  # θ2's labels are fixed for θ1's update
        with phases.phase("loss"), base.autocast():
            losses = self.method.learner_losses(outputs, batch.labels, aux_targets)
        if self.method.config.log_grad_similarity:
            shared = [p for p in base.model.backbone.parameters() if p.requires_grad]
            losses["grad_cosine"] = gradient_cosine(losses["primary"], losses["auxiliary"], shared).detach()
        base.update(losses["loss"])
        base.scheduler.step()
        return losses

    def update_generator(self, batch) -> dict[str, torch.Tensor]:
        method, base = self.method, self.base
        lr = base.optimizer.param_groups[0]["lr"]  # α: θ1's current learning rate
        with phases.phase("meta"):
            with base.autocast():
                objective, parts = method.meta_objective(base.model, batch.views, batch.labels, lr)
            method.generator_optimizer.zero_grad(set_to_none=True)
            objective.backward(inputs=list(method.generator.parameters()))
            method.generator_optimizer.step()
        return {"meta_loss": objective.detach(), **parts}
