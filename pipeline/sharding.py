"""Which dataset indices each rank reads, per epoch; identical on every rank for the same seed and epoch."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .batch import LoaderSettings


# The random streams of a run, each drawn from its own derived_seed(..., STREAM, ...) so that none shifts another.
CROP_STREAM = 1  # the resident loader's crop offsets and flips, per (seed, epoch, rank)
WORKER_STREAM = 2  # the torch DataLoader's worker seeds, per (seed, rank)
SHUFFLE_STREAM = 3  # MoCo's batch shuffle across ranks, per (seed, step)
VIEW_STREAM = 4  # the contrastive loaders' random views, per (seed, epoch, rank, step)
QUEUE_STREAM = 5  # the random keys a MoCo queue or SimCLR v2 memory starts with, per seed
STEP_STREAM = 6  # torch's and numpy's global generators during training, per (seed, rank)
AUX_LABEL_STREAM = 7  # maxl_random's auxiliary label of each training image, per seed


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from several integers, so (seed, epoch, rank) streams never collide: the one way this
    project derives a seed."""
    generator = torch.Generator().manual_seed(0x5EED)
    value = 0
    for part in parts:
        generator.manual_seed((value * 1_000_003 + int(part) + 1) % (2**63))
        value = int(torch.randint(0, 2**62, (1,), generator=generator).numpy()[0])  # a host draw, read on the host
    return value


def check_global_batch(global_batch: int, world_size: int, num_samples: int) -> int:
    """Per-rank batch; a global batch must split evenly and fit the data at least once."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {world_size}")
    if num_samples < global_batch:
        raise ValueError(f"the training set has {num_samples} images, fewer than one global batch of {global_batch}")
    return global_batch // world_size


def training_shard(num_samples: int, global_batch: int, rank: int, world_size: int, seed: int,
                   epoch: int) -> torch.Tensor:
    """This rank's indices for one epoch, in step order: of each global batch (a slice of one seeded
    permutation shared by all ranks) the rank takes its own contiguous part; the ragged tail is dropped."""
    per_rank = check_global_batch(global_batch, world_size, num_samples)
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))
    steps = num_samples // global_batch
    return order[: steps * global_batch].view(steps, world_size, per_rank)[:, rank].reshape(-1)


def evaluation_shard(num_samples: int, rank: int, world_size: int) -> torch.Tensor:
    """Every index once across ranks (strided), no padding: results are summed, not averaged."""
    return torch.arange(rank, num_samples, world_size)


def shard_indices(num_samples: int, settings: LoaderSettings, epoch: int) -> torch.Tensor:
    """This rank's indices for the epoch, in step order (the one sharding rule, above)."""
    if settings.train:
        return training_shard(num_samples, settings.global_batch, settings.rank, settings.world_size, settings.seed,
                              epoch)
    return evaluation_shard(num_samples, settings.rank, settings.world_size)


def steps_in_epoch(num_samples: int, settings: LoaderSettings) -> int:
    if settings.train:
        check_global_batch(settings.global_batch, settings.world_size, num_samples)
        return num_samples // settings.global_batch
    return -(-len(evaluation_shard(num_samples, settings.rank, settings.world_size)) // settings.per_rank_batch)
