"""The device-resident loader: the whole uint8 dataset lives on the training device.

Each step gathers its indices, crops and flips the batch in one pass and expands the M
views; no worker processes, no host-to-device copies after the first. One gather per batch
does pad-and-random-crop and the horizontal flip together; the random draws come from a CPU
generator so that a seed gives the same batch on any device, drawn for a whole epoch at once
so that a step copies nothing to the device.
"""
from __future__ import annotations

import torch

from kernels.reference import crop_and_flip

from .batch import Batch, LoaderSettings
from .datasets import ImageSet
from . import phases
from .sharding import CROP_STREAM, derived_seed, shard_indices, steps_in_epoch


def draw_crop_and_flip(batch: int, padding: int, generator: torch.Generator,
                       flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, left) offsets in the padded image and whether to mirror each image; the coins are drawn with flips
    off too (all False), so the crops are the same draws either way."""
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flips = (torch.rand(batch, generator=generator) < 0.5) & flip
    return offsets, flips


def draw_epoch_crops(batch_sizes: list[int], padding: int, generator: torch.Generator, device: torch.device,
                     flip: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every step's (offsets, flips), drawn step after step as `draw_crop_and_flip` draws them, copied to the
    device in one transfer."""
    draws = [draw_crop_and_flip(batch, padding, generator, flip) for batch in batch_sizes]
    offsets = torch.cat([o for o, _ in draws]).to(device)
    flips = torch.cat([f for _, f in draws]).to(device)
    return list(zip(offsets.split(batch_sizes), flips.split(batch_sizes)))


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
        bind_gather = getattr(settings.expander, "bind_gather", None)  # the family's views: one fused kernel
        self.gather_views = bind_gather(self.images, settings.crop_padding) if bind_gather else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.settings.expander.begin_epoch(epoch)  # stochastic views are drawn per (epoch, step)

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self):
        settings = self.settings
        augment = settings.augment
        indices = shard_indices(len(self.labels), settings, self.epoch).to(self.images.device)
        batches = indices.split(settings.per_rank_batch)
        if augment:
            augment_rng = torch.Generator().manual_seed(derived_seed(settings.seed, self.epoch, settings.rank, CROP_STREAM))
            crops = draw_epoch_crops([len(b) for b in batches], settings.crop_padding, augment_rng, self.images.device,
                                     settings.flip)
        for step, step_indices in enumerate(batches):
            with phases.phase("expand"):  # gather, crop, flip and views: one pass over the batch on the device
                if augment and self.gather_views is not None:
                    views = self.gather_views(step_indices, *crops[step])
                elif augment:
                    views = settings.expander(crop_and_flip(self.images[step_indices], *crops[step],
                                                            settings.crop_padding))
                else:
                    views = settings.expander(self.images[step_indices])
            yield Batch(views, self.labels[step_indices], step_indices)
