"""The batch contract every loader honours, and the settings every loader is built from."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .views import ViewExpander


@dataclass
class Batch:
    views: torch.Tensor  # [B·M, C, H, W] channels_last, input dtype, on the device; row b·M+j = t_j(x_b)
    labels: torch.Tensor  # [B] int64, on the device
    indices: torch.Tensor  # [B] int64: which images of the split these are (for audits and shard checks)


def rows_to_device(host_rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """A loader's host int64 rows (labels, indices) on the device in one non-blocking copy, pinned first on a
    GPU (a copy from pageable memory would make the host wait)."""
    if device.type == "cuda":
        host_rows = host_rows.pin_memory()
    return host_rows.to(device, non_blocking=True).unbind(0)


@dataclass
class LoaderSettings:
    expander: ViewExpander
    device: torch.device
    global_batch: int  # source images per step, all ranks together
    train: bool  # True: seeded shuffle, augmentation, ragged tail dropped; False: every image once, in order
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    crop_padding: int = 4  # pad-and-random-crop margin; negative switches augmentation off
    flip: bool = True  # augmentation mirrors half the images (off where a mirror changes the class: --flip)
    workers: int = 0  # CPU worker processes or threads; 0 picks the cores this rank may use
    cache_dir: str = "data/ffcv"  # where the ffcv loader keeps its .beton files
    dali_views: str = "batched"  # random views on the dali loader: the batched pass, or DALI's operators
    strict_images: bool = False  # streamed folders: an unreadable file fails the run instead of being skipped

    @property
    def streaming_crop(self) -> str:
        """How a streamed image becomes S×S (pipeline/imagenet_crops.py): random-resized crops for training
        with augmentation, the plain centre square when a view recipe crops for itself, else evaluation's."""
        if not self.train:
            return "evaluation"
        return "random_resized" if self.augment else "centre_square"

    @property
    def per_rank_batch(self) -> int:
        return self.global_batch // self.world_size

    @property
    def augment(self) -> bool:
        return self.train and self.crop_padding >= 0

    def worker_count(self) -> int:
        if self.workers > 0:
            return self.workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(1, cores // local_world)
