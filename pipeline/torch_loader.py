"""The reference loader: a PyTorch DataLoader with per-sample augmentation in worker processes,
as the papers' code does it (RandomCrop(32, padding=4) + RandomHorizontalFlip per image), with
pinned memory and prefetching as a careful user would set them; workers restart each epoch so
that their seeds, and a resumed run, are exact. Benchmarks compare every other loader with it."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .batch import Batch, LoaderSettings
from .datasets import ImageSet
from .phases import phase
from .sharding import derived_seed, shard_indices, steps_in_epoch


class AugmentedImages(Dataset):
    """Image i as uint8 [H, W, C], zero-padded, randomly cropped and mirrored on its own."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, padding: int):
        self.images, self.labels, self.padding = images, labels, padding

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.padding >= 0:
            height, width, _ = image.shape
            top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()  # worker RNG, seeded per epoch
            padded = np.pad(image, ((self.padding, self.padding), (self.padding, self.padding), (0, 0)))
            image = padded[top:top + height, left:left + width]
            if torch.rand(()) < 0.5:
                image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index]), index


class EpochShardSampler(Sampler):
    """This rank's indices for the current epoch, by the shared sharding rule."""

    def __init__(self, num_samples: int, settings: LoaderSettings):
        self.num_samples, self.settings, self.epoch = num_samples, settings, 0

    def __iter__(self):
        return iter(shard_indices(self.num_samples, self.settings, self.epoch).tolist())

    def __len__(self) -> int:
        return len(shard_indices(self.num_samples, self.settings, self.epoch))


class TorchLoader:
    def __init__(self, split: ImageSet, settings: LoaderSettings):
        self.settings = settings
        self.num_steps = steps_in_epoch(len(split), settings)
        self.sampler = EpochShardSampler(len(split), settings)
        self.generator = torch.Generator()
        workers = settings.worker_count()
        self.data_loader = DataLoader(
            AugmentedImages(split.images, split.labels, settings.crop_padding if settings.augment else -1),
            batch_size=settings.per_rank_batch, sampler=self.sampler, num_workers=workers,
            pin_memory=settings.device.type == "cuda",  # workers restart each epoch: reseeded, so a resume is exact
            prefetch_factor=4 if workers > 0 else None, generator=self.generator, drop_last=False)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch
        self.settings.expander.begin_epoch(epoch)  # stochastic views are drawn per (epoch, step)
        self.generator.manual_seed(derived_seed(self.settings.seed, epoch, self.settings.rank, 2))  # worker seeds

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self):
        device = self.settings.device
        for images, labels, indices in self.data_loader:
            with phase("copy"):
                images = images.to(device, non_blocking=True)
                labels, indices = labels.to(device, non_blocking=True), indices.to(device, non_blocking=True)
            with phase("expand"):
                views = self.settings.expander(images)
            yield Batch(views, labels, indices)
