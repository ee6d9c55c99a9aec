"""The reference loader: a PyTorch DataLoader with per-sample augmentation in worker processes,
as the papers' code does it (RandomCrop(32, padding=4) + RandomHorizontalFlip per image; for
streamed folders, PIL decoding and ImageNet's crops per image), with pinned memory and
prefetching as a careful user would set them. Benchmarks compare every other loader with it.

The workers are started once per run from a fork server (a fresh single-threaded interpreter), never
forked from the training process: that process runs threads (torch's, Numba's, DALI's, gloo's), and a
fork taken while another thread holds a lock leaves the lock held forever in the child. Each sample's
random crop is drawn from (seed, epoch, image index), which the sampler hands over with the index, so
the augmentation does not depend on which worker made it, on the worker count or on a resume."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .batch import Batch, LoaderSettings
from .datasets import DataError, ImageSet
from .imagenet_crops import crop_with_pil, load_rgb, sample_rng
from . import phases
from .sharding import WORKER_STREAM, derived_seed, shard_indices, steps_in_epoch


class AugmentedImages(Dataset):
    """Image i as uint8 [H, W, C], zero-padded, randomly cropped and mirrored on its own; keys are (epoch, i)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, padding: int, seed: int, flip: bool = True):
        # A tensor, not the array: the workers then map the images from shared memory instead of each
        # receiving a pickled copy.
        self.images, self.labels, self.padding, self.seed = torch.from_numpy(images), labels, padding, seed
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image = self.images[index].numpy()
        if self.padding >= 0:
            height, width, _ = image.shape
            rng = sample_rng(self.seed, epoch, index)
            top, left = rng.integers(0, 2 * self.padding + 1, size=2)
            padded = np.pad(image, ((self.padding, self.padding), (self.padding, self.padding), (0, 0)))
            image = padded[top:top + height, left:left + width]
            if rng.random() < 0.5 and self.flip:  # the coin is drawn either way
                image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index]), index, True


class StreamedImages(Dataset):
    """Image i decoded from its file with PIL and cropped (pipeline/imagenet_crops.py), per sample, per epoch;
    an unreadable file gives a blank image flagged False, which the loader drops (or a DataError, strict)."""

    def __init__(self, split, crop: str, seed: int, strict: bool, flip: bool = True):
        self.files, self.labels, self.size = split.files, split.labels, split.image_size
        self.crop, self.seed, self.strict, self.flip = crop, seed, strict, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, problem = load_rgb(self.files[index])
        if image is None:
            if self.strict:
                raise DataError(f"unreadable image {self.files[index]}: {problem} (--strict-images)")
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), int(self.labels[index]), index, False
        rng = sample_rng(self.seed, epoch, index) if self.crop == "random_resized" else None
        return torch.from_numpy(crop_with_pil(image, self.size, self.crop, rng, self.flip)), int(self.labels[index]), index, True


class EpochShardSampler(Sampler):
    """This rank's indices for the current epoch, by the shared sharding rule, each as the key (epoch, index):
    the workers live for the whole run, so the epoch travels with the index."""

    def __init__(self, num_samples: int, settings: LoaderSettings):
        self.num_samples, self.settings, self.epoch = num_samples, settings, 0

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in shard_indices(self.num_samples, self.settings, epoch).tolist())

    def __len__(self) -> int:
        return len(shard_indices(self.num_samples, self.settings, self.epoch))


WORKER_CONTEXT = torch.multiprocessing.get_context("forkserver")
# The fork server imports these once, so that each worker it forks starts with them loaded (a fresh import of
# torch per worker took seconds); importing them starts no thread.
WORKER_CONTEXT.set_forkserver_preload(["torch", __name__])


class TorchLoader:
    def __init__(self, split: ImageSet, settings: LoaderSettings):
        self.settings = settings
        self.num_steps = steps_in_epoch(len(split), settings)
        self.sampler = EpochShardSampler(len(split), settings)
        self.skipped_this_epoch: list[int] = []  # indices of the files that could not be decoded
        workers = settings.worker_count()
        if split.streaming:
            self.dataset = StreamedImages(split, settings.streaming_crop, settings.seed, settings.strict_images,
                                          settings.flip)
        else:
            self.dataset = AugmentedImages(split.images, split.labels, settings.crop_padding if settings.augment else -1,
                                           settings.seed, settings.flip)
        self.data_loader = DataLoader(
            self.dataset, batch_size=settings.per_rank_batch, sampler=self.sampler, num_workers=workers,
            multiprocessing_context=WORKER_CONTEXT, persistent_workers=True,  # module docstring
            pin_memory=settings.device.type == "cuda", prefetch_factor=4, drop_last=False,
            # its own generator: the DataLoader draws its workers' base seed from it, not from the run's stream
            generator=torch.Generator().manual_seed(derived_seed(settings.seed, settings.rank, WORKER_STREAM)))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch
        self.settings.expander.begin_epoch(epoch)  # stochastic views are drawn per (epoch, step)

    def close(self) -> None:
        """Stops the workers now (they otherwise live until the loader is collected)."""
        iterator = self.data_loader._iterator  # the persistent workers' iterator; torch has no public close
        if iterator is not None:
            iterator._shutdown_workers()
            self.data_loader._iterator = None

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self):
        device = self.settings.device
        self.skipped_this_epoch = []
        for images, labels, indices, readable in self.data_loader:
            if not readable.numpy().all():  # host tensors from the workers, read on the host
                self.skipped_this_epoch += indices.numpy()[~readable.numpy()].tolist()
                images, labels, indices = images[readable], labels[readable], indices[readable]
            with phases.phase("copy"):
                images = images.to(device, non_blocking=True)
                labels, indices = labels.to(device, non_blocking=True), indices.to(device, non_blocking=True)
            with phases.phase("expand"):
                views = self.settings.expander(images)
            yield Batch(views, labels, indices)
