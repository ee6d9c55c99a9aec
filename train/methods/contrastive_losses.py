"""The contrastive family's losses (docs/methods.md, "Self-supervised family"), on the interleaved view
layout: row b·V + v is view v of image b, so with two views the positive of row i is row i ^ 1."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import upcast


@dataclass(frozen=True)
class Ranks:
    """The processes a method's collectives span, from the run's DistributedContext (`Method.ranks`)."""
    world_size: int = 1
    rank: int = 0
    even_rows: bool = True  # every rank's batch has the same rows (a streamed folder's may lose unreadable files)

    @property
    def initialised(self) -> bool:
        """As DistributedContext's, so that train.distributed's collectives take a Ranks too."""
        return self.world_size > 1


ONE_PROCESS = Ranks()


def gather_with_gradient(rows: torch.Tensor, ranks: Ranks = ONE_PROCESS) -> tuple[torch.Tensor, int]:
    """Every rank's rows (rank order) and where this rank's start; under torchrun the all-gather keeps the
    gradient of the local part (torch.distributed.nn), so negatives come from the whole global batch.
    Where ranks may hold different row counts (`even_rows` false), the counts are exchanged first, the rows
    padded to the largest for the collective and the padding removed after it; otherwise, as the sampler
    guarantees for in-memory data, the step exchanges nothing but the rows."""
    if ranks.world_size == 1:
        return rows, 0
    # torch's functional collective with autograd: the backward reduce-scatters (sums) every rank's gradient
    from torch.distributed._functional_collectives import all_gather_single_autograd, wait_tensor

    world, rank = ranks.world_size, ranks.rank
    counts = [rows.shape[0]] * world
    if not ranks.even_rows:
        exchanged = [torch.zeros(1, dtype=torch.int64, device=rows.device) for _ in range(world)]
        torch.distributed.all_gather(exchanged, torch.tensor([rows.shape[0]], device=rows.device))
        counts = [int(c) for c in exchanged]
    padded = rows if len(set(counts)) == 1 else F.pad(rows.flatten(1), (0, 0, 0, max(counts) - rows.shape[0]))
    gathered = wait_tensor(all_gather_single_autograd(padded.contiguous(), gather_dim=0,
                                                      group=torch.distributed.group.WORLD))
    offset = sum(counts[:rank])
    if len(set(counts)) == 1:
        return gathered, offset
    keep = torch.cat([torch.arange(count, device=rows.device) + r * max(counts) for r, count in enumerate(counts)])
    return gathered[keep].view(sum(counts), *rows.shape[1:]), offset


def own_columns(rows: torch.Tensor, offset: int, columns: int) -> torch.Tensor:
    """[B, columns] bool: True at each local row's own column among every rank's rows (built on the device,
    where an index assignment would copy its value from the host)."""
    return torch.arange(columns, device=rows.device) == (rows + offset).unsqueeze(1)


def nt_xent(projections: torch.Tensor, temperature: float, memory: torch.Tensor | None = None,
            ranks: Ranks = ONE_PROCESS) -> torch.Tensor:
    """SimCLR's NT-Xent over the 2B views: for each row, −log of its positive's share of exp(cos/τ) over
    every other row of the (global) batch, its own row excluded, and over `memory`'s unit keys when
    given (SimCLR v2's memory: negatives only, no gradient); mean over the local rows."""
    z = F.normalize(upcast(projections), dim=1)
    everyone, offset = gather_with_gradient(z, ranks)
    logits = z @ everyone.T / temperature
    rows = torch.arange(z.shape[0], device=z.device)
    logits = logits.masked_fill(own_columns(rows, offset, logits.shape[1]), float("-inf"))  # not its own negative
    if memory is not None:
        logits = torch.cat([logits, z @ memory.detach().to(z.dtype).T / temperature], dim=1)
    positives = (rows ^ 1) + offset
    return F.cross_entropy(logits, positives)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: the positive logit q·k⁺ first, then q against every queued key; keys carry no gradient."""
    q = F.normalize(upcast(queries), dim=1)
    k = F.normalize(upcast(keys), dim=1).detach()
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.detach().T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.int64, device=q.device))


def symmetric_key_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float,
                       ranks: Ranks = ONE_PROCESS) -> torch.Tensor:
    """One direction of MoCo v3's loss: query i's key is key i among every rank's keys (no gradient into
    keys), InfoNCE at τ, times 2τ (the paper's scaling); mean over the local queries."""
    q = F.normalize(upcast(queries), dim=1)
    k = F.normalize(upcast(keys), dim=1).detach()
    everyone, offset = gather_with_gradient(k, ranks)
    logits = q @ everyone.T / temperature
    targets = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, targets) * 2 * temperature


def normalised_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BYOL: ‖p̂ − ẑ‖² = 2 − 2·cos(p, z) per pair, batch mean; no gradient into the target."""
    p = F.normalize(upcast(predictions), dim=1)
    z = F.normalize(upcast(targets), dim=1).detach()
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def knn_scores(features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
               k: int = 200, temperature: float = 0.1) -> torch.Tensor:
    """[B, N] class scores of a weighted k-NN vote (InstDisc's monitor): the k most cosine-similar bank
    features vote for their class with weight exp(cos/T)."""
    sims = F.normalize(upcast(features), dim=1) @ bank.T
    top, index = sims.topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(features.shape[0], num_classes, device=features.device, dtype=top.dtype)
    return votes.scatter_add_(1, bank_labels[index], (top / temperature).exp())
