"""The method API. A method is made from the run's TrainConfig (its options are fields there), checks
its settings at once, and is bound, when it builds its model, to everything fixed for the run: the
transformation family (so M, `num_transforms`) and the kernel backend, decided once from the device.
After that a step calls `forward(model, views)`, `losses(outputs, labels)` and, in evaluation,
`class_scores(outputs)`; nothing else needs to know M or the backend.

Row layout (docs/methods.md): views are interleaved, row b·M + j is view j of image b, view 0 is the
identity, and a joint label is y·M + j.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

import kernels
from kernels import identity_rows
from train.methods.run_checkpoints import load_backbone

if TYPE_CHECKING:  # the config composes every family's options, declared in these modules
    from train.config import TrainConfig


def per_view_labels(labels: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """Class label of every row b·M+j: y[b]."""
    return labels.repeat_interleave(num_transforms)


def transform_labels(batch: int, num_transforms: int, device) -> torch.Tensor:
    """Transform label of every row b·M+j: j."""
    return torch.arange(num_transforms, device=device).repeat(batch)


def views_mean(class_logits: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """[B·M, N] → [B, N]: the mean of an N-way head's logits over an image's views."""
    return kernels.upcast(class_logits).reshape(-1, num_transforms, class_logits.shape[1]).mean(dim=1)


def place(network: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """`network` on `device`, channels_last when asked: every network of a run, trained or not, goes through here."""
    network = network.to(device)
    return network.to(memory_format=torch.channels_last) if channels_last else network


class Method:
    name = ""
    uses_transforms = True  # False: trains on the identity view alone (M = 1)
    primary_score = "SI"  # the score used for model selection

    def __init__(self, config: TrainConfig):
        self.config = config
        self.family: kernels.TransformFamily | None = None
        self.backend = ""
        self.loss_kernels = None  # kernels.for_device's, once bound
        self.context = None  # the run's train.distributed.DistributedContext, once attached

    def attach(self, context, even_rows: bool = True) -> None:
        """The run's DistributedContext (train/run.py attaches it before the model is built): the method's
        collectives (gathered negatives, SwAV's queue, MAXL's generator under DDP) ask it, not torch.distributed.
        `even_rows`: every rank's batch holds the same rows (in-memory data; a streamed batch may lose files)."""
        self.context, self.even_rows = context, even_rows

    even_rows = True  # set by train/run.py: False where a streamed folder's batches may lose unreadable files

    @property
    def ranks(self):
        """Who the method's collectives span (train.methods.contrastive_losses.Ranks): one process until a
        run's DistributedContext with an initialised process group is attached."""
        from train.methods.contrastive_losses import Ranks

        context = self.context
        if context is None or not context.initialised or context.world_size == 1:
            return Ranks()
        return Ranks(context.world_size, context.rank, self.even_rows)

    # ---- fixed for the run
    @property
    def transform_family(self) -> str:
        """The name of the transformation family this method trains with."""
        return self.config.transforms if self.uses_transforms else "none"

    def bind(self, family: kernels.TransformFamily, device: torch.device) -> None:
        """Fix M and the kernel backend (auto → by device, once; cf. nanoGPT's `self.flash`)."""
        self.family = family
        self.num_transforms = family.num_transforms  # M
        self.loss_kernels = kernels.for_device(self.config.kernels, device)
        self.backend = self.loss_kernels.backend

    def build_model(self, model_name: str, num_classes: int, family: kernels.TransformFamily, device: torch.device,
                    channels_last: bool) -> nn.Module:
        """Bind the method, then return the trained network on `device` (channels_last when asked)."""
        self.bind(family, device)
        network = self.network(model_name, num_classes)
        if self.config.init_from:  # start from another run's backbone (e.g. contrastive pretraining)
            if not isinstance(getattr(network, "backbone", None), nn.Module):
                raise ValueError(f"--init-from: {self.name} has no single backbone to initialise")
            self.init_record = load_backbone(network.backbone, self.config.init_from, "--init-from", model_name)
        return place(network, device, channels_last)

    @property
    def backbone_name(self) -> str:
        """The backbone a run of this method leaves in its checkpoints, as a `--model` name: `--init-from` and
        `--pretrained` ask for the same `--model`."""
        return self.config.model

    def network(self, model_name: str, num_classes: int) -> nn.Module:
        raise NotImplementedError

    # ---- per step
    def forward(self, model: nn.Module, views: torch.Tensor):
        """The training forward pass; a method with a teacher adds the teacher's outputs here."""
        return model(views)

    def losses(self, outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"loss": the total to minimise, part name: value, ...}."""
        raise NotImplementedError

    def class_scores(self, outputs) -> dict[str, torch.Tensor]:
        """{score name: [B, N] class logits} for evaluation; the names are `score_names()`."""
        raise NotImplementedError

    def score_names(self) -> tuple[str, ...]:
        """The scores `class_scores` returns (once bound), in the order the summary prints them."""
        raise NotImplementedError

    def evaluation_hits(self, outputs, batch) -> dict[str, torch.Tensor]:
        """{name: [B] bool} for evaluation measures other than class accuracy (MAXL: the auxiliary head's
        agreement with the label generator); each name is also in `score_names()`."""
        return {}

    # ---- methods with more than one network or update (MAXL); the defaults serve single-step methods
    def see_data(self, splits) -> None:
        """Called once with the run's DatasetSplits before the model is built, for methods that need more
        than the class labels (MAXL's human auxiliary labels)."""

    passes_per_epoch = 1  # loader passes per epoch (MAXL's Algorithm 1: the learner's pass, then the generator's)

    def epoch_batches(self, loader, epoch: int):
        """The epoch's training batches, in order."""
        loader.set_epoch(epoch)
        return iter(loader)

    def after_update(self, model: nn.Module, outputs) -> None:
        """Called by the step after every optimizer update with that step's `forward` outputs: momentum encoders
        and queues (train/methods/contrastive.py); nothing for most methods."""

    def make_step(self, step, total_steps: int):
        """The callable the loop runs per batch: `step` (train.step.TrainStep) itself, or a method's own step
        built around it (MAXL adds its generator's optimizer and schedule)."""
        return step

    # ---- contrastive methods: random training views and evaluation on a feature bank
    needs_training_features = False  # True: `before_evaluation` gets a loader over the training split

    def training_view_recipe(self) -> str | None:
        """The random-view recipe (pipeline/random_views.py) the training loader draws, or None for the
        transformation family's M views."""
        return None

    def before_evaluation(self, model, training_split_loader, autocast_context) -> None:
        """Called before every evaluation (the k-NN monitor embeds the training split here)."""

    def state_dict(self) -> dict:
        """What a checkpoint needs beyond the model, optimizer and schedule (MAXL: its generator's)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state of its own, but the checkpoint has {sorted(state)}")

    def check_deferred_errors(self) -> None:
        """Raise what the kernels flagged without a host sync (a label out of range on CUDA); the loop
        calls this at its logging sync."""
        kernels.raise_pending_label_error()

    # ---- files outside the run
    init_record: dict = {}  # --init-from's path, hash and method, once loaded

    def provenance(self) -> dict:
        """What outside this run the method depends on (a teacher or pretrained checkpoint's path and hash)."""
        return dict(self.init_record)

    def check_resume(self, checkpoint: dict) -> None:
        """Refuse to resume a checkpoint trained against a different file than this run depends on."""
        recorded = checkpoint.get("provenance", {})
        for key, value in self.provenance().items():
            if key.endswith("_sha256") and recorded.get(key) != value:
                what = key[: -len("_sha256")]
                raise ValueError(f"the --resume checkpoint was trained with --{what.replace('_', '-')} "
                                 f"{recorded.get(what)} (sha256 {recorded.get(key)}), but this run's "
                                 f"{self.provenance().get(what)} has sha256 {value}")


__all__ = ["Method", "identity_rows", "per_view_labels", "place", "transform_labels", "views_mean"]
