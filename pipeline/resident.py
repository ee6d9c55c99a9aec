"""The device-resident loader: the whole uint8 dataset lives on the training device.

Each step gathers its indices, crops and flips the batch in one pass and expands the M
views; no worker processes, no host-to-device copies after the first.
"""
from __future__ import annotations

import torch

from .augment import random_crop_and_flip
from .batch import Batch, LoaderSettings
from .datasets import ImageSet
from .phases import phase
from .sharding import derived_seed, shard_indices, steps_in_epoch


def fits_on_device(num_bytes: int, device: torch.device, share: float = 0.5) -> None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if num_bytes > share * free:
            raise ValueError(
                f"the resident loader needs {num_bytes / 2**30:.2f} GiB on {device} but only {free / 2**30:.2f} GiB "
                "is free; use --loader dali or --loader ffcv for this dataset"
            )


class ResidentLoader:
    def __init__(self, split: ImageSet, settings: LoaderSettings):
        if split.streaming:
            raise ValueError("the resident loader needs the decoded images in memory, and this folder is streamed "
                             "(too large for --data-in-memory auto); use --loader dali, ffcv or torch, or "
                             "--data-in-memory yes")
        fits_on_device(split.images.nbytes, settings.device)
        self.settings = settings
        self.images = torch.from_numpy(split.images).to(settings.device)
        self.labels = torch.from_numpy(split.labels).to(settings.device)
        self.num_steps = steps_in_epoch(len(split), settings)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.settings.expander.begin_epoch(epoch)  # stochastic views are drawn per (epoch, step)

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self):
        settings = self.settings
        indices = shard_indices(len(self.labels), settings, self.epoch).to(self.images.device)
        augment_rng = torch.Generator().manual_seed(derived_seed(settings.seed, self.epoch, settings.rank, 1))
        for start in range(0, len(indices), settings.per_rank_batch):
            step_indices = indices[start:start + settings.per_rank_batch]
            with phase("expand"):  # gather, crop, flip and views: one pass over the batch on the device
                images = self.images[step_indices]
                if settings.augment:
                    images = random_crop_and_flip(images, settings.crop_padding, augment_rng)
                views = settings.expander(images)
            yield Batch(views, self.labels[step_indices], step_indices)
