"""MAXL's losses (docs/methods.md, "MAXL"), each computed in log space so that no logit overflows:
the mask softmax over a class's block of auxiliary labels, the focal loss, and the entropy
regulariser of the generated labels."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from kernels import upcast


class ClassBlocks:
    """Hierarchy ψ: class c owns auxiliary labels [start_c, start_c + ψ_c), blocks in class order."""

    def __init__(self, aux_per_class: Sequence[int]):
        if any(int(size) < 1 for size in aux_per_class):
            raise ValueError(f"every class needs at least one auxiliary label (ψ_c ≥ 1); got {list(aux_per_class)}")
        self.sizes = torch.tensor([int(size) for size in aux_per_class], dtype=torch.int64)
        self.starts = torch.cumsum(self.sizes, 0) - self.sizes
        self.num_aux = int(self.sizes.sum())
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.sizes)

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(starts, sizes) on `device`, copied there once rather than at every step."""
        if device not in self._on_device:
            self._on_device[device] = (self.starts.to(device), self.sizes.to(device))
        return self._on_device[device]

    def mask(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, K] bool: True on the block of each row's class."""
        block_starts, block_sizes = self.tables(labels.device)
        starts = block_starts[labels].unsqueeze(1)
        ends = starts + block_sizes[labels].unsqueeze(1)
        columns = torch.arange(self.num_aux, device=labels.device)
        return (columns >= starts) & (columns < ends)

    def class_of(self, aux_labels: torch.Tensor) -> torch.Tensor:
        """The class whose block holds each auxiliary label."""
        return torch.bucketize(aux_labels, self.tables(aux_labels.device)[0][1:], right=True)


def mask_log_softmax(logits: torch.Tensor, labels: torch.Tensor, blocks: ClassBlocks) -> torch.Tensor:
    """log p over each row's class block (−inf elsewhere); the max is taken over the block only, so
    logits of any size stay finite, and outside the block exp gives exactly 0."""
    return F.log_softmax(upcast(logits).masked_fill(~blocks.mask(labels), float("-inf")), dim=1)


def mask_softmax(logits: torch.Tensor, labels: torch.Tensor, blocks: ClassBlocks) -> torch.Tensor:
    """[B, K] generated label distributions: rows sum to 1, exact zeros outside the class's block."""
    return mask_log_softmax(logits, labels, blocks).exp()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Batch mean of −Σ_k y_k (1 − p_k)^γ log p_k, p = softmax(logits); `targets` are class indices
    (one-hot y) or [B, K] distributions. γ = 0 is cross-entropy."""
    log_p = F.log_softmax(upcast(logits), dim=1)
    if targets.dtype == torch.int64:
        log_p = log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
        weight = (-torch.expm1(log_p)).pow(gamma) if gamma else 1.0  # 1 − p, accurate near p = 1
        return -(weight * log_p).mean()
    return (targets * focal_terms(log_p, gamma)).sum(dim=1).mean()


def focal_terms(log_p: torch.Tensor, gamma: float) -> torch.Tensor:
    """[B, K] per-label focal terms −(1 − p_k)^γ log p_k: a soft-target focal loss is linear in them."""
    weight = (-torch.expm1(log_p)).pow(gamma) if gamma else 1.0
    return -(weight * log_p)


def negative_entropy(generated: torch.Tensor) -> torch.Tensor:
    """H = Σ_k ȳ_k log ȳ_k of the batch-mean generated label ȳ (minimising it spreads the labels);
    labels no row of the batch can take (ȳ_k = 0) add 0 and pass no gradient."""
    mean = generated.mean(dim=0)
    tiny = torch.finfo(mean.dtype).tiny
    return torch.where(mean > 0, mean * mean.clamp_min(tiny).log(), torch.zeros_like(mean)).sum()
