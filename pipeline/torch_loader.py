"""The reference loader: a PyTorch DataLoader with per-sample augmentation in worker processes,
as the papers' code does it (RandomCrop(32, padding=4) + RandomHorizontalFlip per image; for
streamed folders, PIL decoding and ImageNet's crops per image), with pinned memory and
prefetching as a careful user would set them; workers restart each epoch so that their seeds,
and a resumed run, are exact. Benchmarks compare every other loader with it."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .batch import Batch, LoaderSettings
from .datasets import DataError, ImageSet
from .imagenet_crops import crop_with_pil, load_rgb, sample_rng
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
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index]), index, True


class StreamedImages(Dataset):
    """Image i decoded from its file with PIL and cropped (pipeline/imagenet_crops.py), per sample, per epoch;
    an unreadable file gives a blank image flagged False, which the loader drops (or a DataError, strict)."""

    def __init__(self, split, crop: str, seed: int, strict: bool):
        self.files, self.labels, self.size = split.files, split.labels, split.image_size
        self.crop, self.seed, self.strict, self.epoch = crop, seed, strict, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image, problem = load_rgb(self.files[index])
        if image is None:
            if self.strict:
                raise DataError(f"unreadable image {self.files[index]}: {problem} (--strict-images)")
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), int(self.labels[index]), index, False
        rng = sample_rng(self.seed, self.epoch, index) if self.crop == "random_resized" else None
        return torch.from_numpy(crop_with_pil(image, self.size, self.crop, rng)), int(self.labels[index]), index, True


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
        self.skipped_this_epoch: list[int] = []  # indices of the files that could not be decoded
        workers = settings.worker_count()
        if split.streaming:
            self.dataset = StreamedImages(split, settings.streaming_crop, settings.seed, settings.strict_images)
        else:
            self.dataset = AugmentedImages(split.images, split.labels, settings.crop_padding if settings.augment else -1)
        self.data_loader = DataLoader(
            self.dataset, batch_size=settings.per_rank_batch, sampler=self.sampler, num_workers=workers,
            pin_memory=settings.device.type == "cuda",  # workers restart each epoch: reseeded, so a resume is exact
            prefetch_factor=4 if workers > 0 else None, generator=self.generator, drop_last=False)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch
        self.dataset.epoch = epoch  # streamed crops are drawn per (seed, epoch, image)
        self.settings.expander.begin_epoch(epoch)  # stochastic views are drawn per (epoch, step)
        self.generator.manual_seed(derived_seed(self.settings.seed, epoch, self.settings.rank, 2))  # worker seeds

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self):
        device = self.settings.device
        self.skipped_this_epoch = []
        for images, labels, indices, readable in self.data_loader:
            if not readable.all():
                self.skipped_this_epoch += indices[~readable].tolist()
                images, labels, indices = images[readable], labels[readable], indices[readable]
            with phase("copy"):
                images = images.to(device, non_blocking=True)
                labels, indices = labels.to(device, non_blocking=True), indices.to(device, non_blocking=True)
            with phase("expand"):
                views = self.settings.expander(images)
            yield Batch(views, labels, indices)
