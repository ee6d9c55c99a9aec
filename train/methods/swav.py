"""SwAV (Caron et al. 2020), `--method swav`: online clustering with swapped prediction and multi-crop.

Every crop's unit projection z is scored against K unit prototypes c_k (a bias-free linear layer whose
rows are renormalised before each step). For each of the two global crops, the codes q (soft
assignments of the batch to the prototypes, equipartitioned) come from Sinkhorn-Knopp on exp(z·c/ε):
3 iterations, ε = 0.05, in float64 whatever the step's precision, with the sums taken over every rank's
batch, and no gradient. Each other crop then predicts them: the loss is the mean over the two global
crops v and the other crops c ≠ v of −Σ_k q_v,k log softmax(z_c·c / τ)_k, τ = 0.1.

Multi-crop (`--local-views L --local-size s`): the loader yields MultiCropViews — the 2 global crops
[B·2, C, S, S] and the L local crops [B·L, C, s, s], each interleaved by image (row b·V + v); codes come
from the global crops only; the network runs once per size.
`--swav-queue-size Q` keeps the global crops' last Q projections (all ranks together: Q / world size on
each rank, as facebookresearch/swav divides it) to give Sinkhorn more rows on small batches, from
`--swav-queue-start-epoch`. The prototypes take a zero gradient during the first
`--freeze-prototypes-epochs` epochs (1, as the paper; weight decay only shrinks them radially, which
the renormalisation before each step undoes). Math: docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import upcast
from models import build_backbone
from pipeline.random_views import MultiCropViews
from train.distributed import all_reduce_sum
from train.methods.contrastive import ContrastiveMethod, ContrastiveNetwork, mlp
from train.methods.contrastive_losses import ONE_PROCESS, Ranks
from train.options import AT_LEAST_0, AT_LEAST_1, field


@dataclass
class SwavOptions:
    """The "SwAV: swav" settings (TrainConfig composes every family's)."""
    HELP_GROUP: ClassVar[str] = "SwAV: swav"
    num_prototypes: int = field(default=3000, metadata={
        "limit": AT_LEAST_1, "resume": True, "help": "swav: prototypes K"})
    local_views: int = field(default=6, metadata={
        "limit": AT_LEAST_0, "resume": True, "help": "swav: small multi-crop views per image (0: only the two global "
                "views)"})
    local_size: int = field(default=0, metadata={
        "limit": AT_LEAST_0, "resume": True, "help": "swav: local views' side in pixels; 0: 96/224 of the data's "
                "side, SwAV's ImageNet proportion"})
    swav_queue_size: int = field(default=0, metadata={
        "limit": AT_LEAST_0, "resume": True, "help": "swav: past global projections per crop kept to give Sinkhorn "
                "more rows (small batches), all ranks together (each keeps its share); 0: none"})
    swav_queue_start_epoch: int = field(default=15, metadata={
        "limit": AT_LEAST_0, "help": "swav: first epoch that uses the queue"})
    freeze_prototypes_epochs: int = field(default=1, metadata={
        "limit": AT_LEAST_0, "help": "swav: epochs without prototype updates"})


SINKHORN_ITERATIONS, SINKHORN_EPSILON, SWAV_TEMPERATURE = 3, 0.05, 0.1


def global_rows(rows: int, device, ranks: Ranks) -> float | torch.Tensor:
    """The batch's rows over every rank: a number in one process or where every rank holds the same rows;
    otherwise (a streamed batch that lost unreadable files on some rank) a device scalar summed over the ranks
    without a host round trip."""
    if ranks.world_size == 1 or ranks.even_rows:
        return float(rows * ranks.world_size)
    total = torch.full((), float(rows), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return total


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, iterations: int = SINKHORN_ITERATIONS,
             epsilon: float = SINKHORN_EPSILON, ranks: Ranks = ONE_PROCESS) -> torch.Tensor:
    """[B, K] prototype scores of this rank's rows → [B, K] codes: every row sums to 1 and, over the rows of
    all ranks together, every prototype gets B_global/K of the mass (within the iterations' tolerance)."""
    q = torch.exp(scores.to(torch.float64) / epsilon).T  # [K, B]
    rows, prototypes = q.shape[1], q.shape[0]
    total_rows = global_rows(rows, q.device, ranks)
    q /= all_reduce_sum(q.sum(), ranks)
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True), ranks)  # every prototype: total mass 1/K
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)  # every row: total mass 1/B_global
        q /= total_rows
    return (q * total_rows).T  # rows sum to 1


def swapped_prediction(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """scores[c]: [B, K] of crop c (the first len(codes) crops are the global ones whose codes these are);
    the mean over code crops v and other crops c ≠ v of the cross-entropy of q_v against softmax(s_c/τ)."""
    terms = []
    for v, q in enumerate(codes):
        for c, crop_scores in enumerate(scores):
            if c != v:
                log_p = F.log_softmax(upcast(crop_scores) / temperature, dim=1)
                terms.append(-(q.to(log_p.dtype) * log_p).sum(dim=1).mean())
    return torch.stack(terms).view(len(codes), -1).mean(dim=1).mean()


class SwavNetwork(ContrastiveNetwork):
    """backbone → projector → unit z → prototype scores; evaluation reads the backbone's features."""

    def __init__(self, backbone: nn.Module, hidden: int, dim: int, num_prototypes: int):
        super().__init__(backbone, mlp([backbone.feature_dim, hidden, dim]))  # facebookresearch/swav's head
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, views: torch.Tensor | MultiCropViews) -> dict:
        """A tensor of views → {features, projection, embedding, scores} (evaluation: features only);
        MultiCropViews → {"global": that of the global views, "local": that of the local ones}: one call of
        the module under DDP, the backbone run once per crop size."""
        if isinstance(views, MultiCropViews):
            return {"global": self(views.global_views), "local": self(views.local_views)}
        outputs = super().forward(views)
        if self.training:
            outputs["embedding"] = F.normalize(outputs["projection"], dim=1)
            outputs["scores"] = self.prototypes(outputs["embedding"])
        return outputs


class Swav(ContrastiveMethod):
    """`swav`: two global crops (recipe `swav`) plus `--local-views` local crops of `--local-size` pixels."""
    name, view_recipe = "swav", "swav"
    pairs_views = False  # its global crops and --local-views local crops are counted by the method itself

    def __init__(self, config):
        super().__init__(config)
        self.epoch, self.image_size = 0, 32
        self.queue: torch.Tensor | None = None

    def see_data(self, splits) -> None:
        self.image_size = splits.train.image_shape[0]

    def local_size(self) -> int:
        """--local-size, or by default SwAV's ImageNet proportion 96/224 of the data's side."""
        return self.config.local_size or max(1, round(self.image_size * 96 / 224))

    def training_view_recipe(self) -> str:
        base = self.config.views or self.view_recipe
        return f"{base}+{self.config.local_views}x{self.local_size()}" if self.config.local_views else base

    def network(self, model_name, num_classes):
        network = SwavNetwork(build_backbone(model_name), self.config.projector_hidden, self.config.projector_dim,
                              self.config.num_prototypes)
        network.prototypes.weight.register_hook(self._prototype_gradient)
        return network

    def _prototype_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """No gradient into the prototypes in the first epochs (the paper: they would collapse early)."""
        return torch.zeros_like(grad) if self.epoch < self.config.freeze_prototypes_epochs else grad

    def epoch_batches(self, loader, epoch):
        self.epoch = epoch
        return super().epoch_batches(loader, epoch)

    def forward(self, model, views):
        self.model_ref.normalise_prototypes()  # on the plain module, whatever wraps it (DDP, compile)
        outputs = model(views)
        return {"global": outputs, "local": None} if isinstance(views, torch.Tensor) else outputs  # no local views

    def crop_scores(self, outputs) -> list[torch.Tensor]:
        """Per crop, [B, K] scores: global crops 0 and 1, then the local crops."""
        scores = [outputs["global"]["scores"][v::2] for v in range(2)]
        if outputs["local"] is not None:
            count = self.config.local_views
            scores += [outputs["local"]["scores"][v::count] for v in range(count)]
        return scores

    def losses(self, outputs, labels):
        scores = self.crop_scores(outputs)
        embeddings = outputs["global"]["embedding"]
        codes = []
        use_queue = self.queue_full and self.epoch >= self.config.swav_queue_start_epoch
        for v in range(2):
            batch_scores = scores[v].detach().float()
            if use_queue:  # the queued projections' scores against today's prototypes add rows to Sinkhorn
                queued = self.queue[v] @ self.model_ref.prototypes.weight.detach().float().T
                batch_scores = torch.cat([batch_scores, queued])
            codes.append(sinkhorn(batch_scores, ranks=self.ranks)[:len(scores[v])])
        if self.queue is not None:
            self.push_queue(embeddings.detach())
        return {"loss": swapped_prediction(scores, codes, SWAV_TEMPERATURE)}

    # ---- the queue of past global embeddings
    def build_model(self, model_name, num_classes, family, device, channels_last):
        model = super().build_model(model_name, num_classes, family, device, channels_last)
        self.model_ref = model
        if self.config.swav_queue_size:
            world = self.ranks.world_size
            if self.config.swav_queue_size % world:
                raise ValueError(f"--swav-queue-size {self.config.swav_queue_size} is the queue of all ranks "
                                 f"together and must divide by the world size {world}")
            per_rank = self.config.swav_queue_size // world
            self.queue = torch.zeros(2, per_rank, self.config.projector_dim, device=device)
            self.queue_filled = 0
        return model

    @property
    def queue_full(self) -> bool:
        return self.queue is not None and self.queue_filled >= self.queue.shape[1]

    @torch.no_grad()
    def push_queue(self, embeddings: torch.Tensor) -> None:
        """The newest rows first: shift the queue by the batch and put its two global crops' z in front."""
        batch = embeddings.shape[0] // 2
        for v in range(2):
            self.queue[v] = torch.cat([embeddings[v::2].float(), self.queue[v][:-batch]])[:self.queue.shape[1]]
        self.queue_filled = min(self.queue.shape[1], self.queue_filled + batch)

    def state_dict(self):
        if self.queue is None:
            return {}
        return {"queue": self.queue, "queue_filled": self.queue_filled}

    def load_state_dict(self, state):
        if self.queue is None:
            return super().load_state_dict(state)
        self.queue.copy_(state["queue"])
        self.queue_filled = state["queue_filled"]
