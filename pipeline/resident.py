"""The device-resident loader: the whole uint8 dataset lives on the training device.

Each step gathers its indices, crops and flips the batch in one pass and expands the M
views; no worker processes, no host-to-device copies after the first.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .augment import random_crop_and_flip
from .sharding import derived_seed, evaluation_shard, training_shard
from .views import ViewExpander


@dataclass
class Batch:
    views: torch.Tensor  # [B·M, C, H, W], row b·M+j = t_j(x_b)
    labels: torch.Tensor  # [B] int64


def fits_on_device(num_bytes: int, device: torch.device, share: float = 0.5) -> None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if num_bytes > share * free:
            raise ValueError(
                f"the resident loader needs {num_bytes / 2**30:.2f} GiB on {device} but only {free / 2**30:.2f} GiB "
                "is free; use --loader dali or --loader ffcv for this dataset"
            )


class ResidentLoader:
    def __init__(self, images: np.ndarray, labels: np.ndarray, expander: ViewExpander, device: torch.device, *,
                 global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0, train: bool = True,
                 crop_padding: int = 4):
        fits_on_device(images.nbytes, device)
        self.images = torch.from_numpy(images).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.expander = expander
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.seed, self.train, self.crop_padding = seed, train, crop_padding
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self) -> torch.Tensor:
        if self.train:
            return training_shard(len(self.labels), self.global_batch, self.rank, self.world_size, self.seed,
                                  self.epoch)
        return evaluation_shard(len(self.labels), self.rank, self.world_size)

    def __len__(self) -> int:
        per_rank = self.global_batch // self.world_size
        return -(-len(self.shard()) // per_rank)

    def __iter__(self):
        per_rank = self.global_batch // self.world_size
        indices = self.shard().to(self.images.device)
        augment_rng = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, self.rank, 1))
        for start in range(0, len(indices), per_rank):
            step_indices = indices[start:start + per_rank]
            images = self.images[step_indices]
            if self.train and self.crop_padding >= 0:
                images = random_crop_and_flip(images, self.crop_padding, augment_rng)
            yield Batch(self.expander(images), self.labels[step_indices])
