"""The FFCV loader: a .beton per split, read by FFCV's compiled pipeline (decode, translate,
mirror, to device), RANDOM order with an explicit seed, `distributed=True` under torchrun. The
M views are then made by `kernels.expand_views` on the device.

Streamed folders' .beton files hold JPEGs of varying size: FFCV's RandomResizedCrop decoder makes
the training crops, its centre-crop decoder (224/256 of the shorter side) the evaluation ones;
rows written for unreadable files (label −1, pipeline/beton.py) are dropped and counted."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .batch import Batch, LoaderSettings, rows_to_device
from .beton import UNREADABLE, beton_for
from .datasets import DataError, ImageSet
from .imagenet_crops import RATIO, SCALE, eval_resize_size
from . import phases
from .streaming import available_memory_bytes
from .sharding import evaluation_shard, steps_in_epoch


@contextlib.contextmanager
def threads_kept():
    """FFCV sets torch's and Numba's thread counts to its worker count when imported (to 1), in Loader() and in
    every iter(): torch's count is process-wide, so the training step after it ran on FFCV's worker count (a
    single thread with `--loader-workers 1`). Put this thread's counts back; FFCV's own thread sets its own."""
    import numba

    threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        numba.set_num_threads(numba_threads)


class FfcvLoader:
    def __init__(self, split: ImageSet, settings: LoaderSettings, name: str):
        with threads_kept():
            self._build(split, settings, name)

    def _build(self, split: ImageSet, settings: LoaderSettings, name: str) -> None:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import (CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder,
                                           SimpleRGBImageDecoder)
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, Squeeze, ToDevice, ToTensor

        self.settings = settings
        steps_in_epoch(len(split), settings)  # the same clear error for a dataset smaller than one global batch
        path = shared_beton(split, settings, name)
        device = settings.device
        self.skipped_this_epoch: list[int] = []  # streamed folders: indices of rows written for unreadable files
        self.files = split.files if split.streaming else ()
        mirror = [RandomHorizontalFlip()] if settings.flip else []
        if split.streaming:
            size, crop = (split.image_size, split.image_size), settings.streaming_crop
            decode = {"random_resized": [RandomResizedCropRGBImageDecoder(size, SCALE, RATIO), *mirror],
                      "centre_square": [CenterCropRGBImageDecoder(size, 1.0)],
                      "evaluation": [CenterCropRGBImageDecoder(size, split.image_size / eval_resize_size(
                          split.image_size))]}[crop]
        elif settings.augment:
            decode = [SimpleRGBImageDecoder(), RandomTranslate(padding=settings.crop_padding), *mirror]
        else:
            decode = [SimpleRGBImageDecoder()]
        to_device = ToDevice(device, non_blocking=True)
        # labels and indices stay on the host: their unreadable rows are dropped there, and what is kept goes to
        # the device in one pinned, non-blocking copy (a check on the device would make the host wait for it)
        pipelines = {"image": [*decode, ToTensor(), to_device],
                     "label": [IntDecoder(), ToTensor(), Squeeze()],
                     "index": [IntDecoder(), ToTensor(), Squeeze()]}
        distributed = settings.world_size > 1
        # a .beton larger than half the free memory is read per batch (FFCV's process cache) instead of through
        # the page cache, whose pages would count against this process as the epoch touches them all
        os_cache = path.stat().st_size <= 0.5 * available_memory_bytes()
        if settings.train:
            order = OrderOption.RANDOM if os_cache or distributed else OrderOption.QUASI_RANDOM  # quasi: 1 rank only
            arguments = dict(order=order, seed=settings.seed, distributed=distributed, drop_last=True)
        else:  # every image once across ranks, no padding: the strided evaluation shard, in order
            shard = evaluation_shard(len(split), settings.rank, settings.world_size).numpy()
            arguments = dict(order=OrderOption.SEQUENTIAL, indices=shard, distributed=False, drop_last=False)
        import numba

        # FFCV's workers are Numba threads: never more than Numba's pool (NUMBA_NUM_THREADS), which it refuses
        workers = min(settings.worker_count(), numba.config.NUMBA_NUM_THREADS)
        self.loader = Loader(str(path), batch_size=settings.per_rank_batch, num_workers=workers,
                             pipelines=pipelines, os_cache=os_cache, batches_ahead=2, **arguments)

    def set_epoch(self, epoch: int) -> None:
        self.loader.next_epoch = epoch  # FFCV shuffles by (seed, epoch)
        self.settings.expander.begin_epoch(epoch)  # stochastic views are drawn per (epoch, step)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with threads_kept():
            batches = iter(self.loader)
        self.skipped_this_epoch = []
        try:
            yield from self._batches(batches)
        finally:  # an epoch left early (--iterations, a benchmark): stop FFCV's reader thread before it outlives us
            batches.close()
            if batches.is_alive():
                batches.join(timeout=30)

    def _batches(self, batches):
        device = self.settings.device
        for images, labels, indices in batches:
            # host arrays, read with numpy; FFCV recycles its buffers a few batches later, so the copy is kept
            labels, indices = labels.numpy().reshape(-1), indices.numpy().reshape(-1)
            readable = labels != UNREADABLE
            if not readable.all():
                if self.settings.strict_images:
                    bad = self.files[int(indices[~readable][0])]
                    raise DataError(f"unreadable image {bad}: its .beton row is blank (--strict-images)")
                self.skipped_this_epoch += indices[~readable].tolist()
                kept = torch.from_numpy(np.flatnonzero(readable)).to(images.device, non_blocking=True)
                images, labels, indices = images.index_select(0, kept), labels[readable], indices[readable]
            labels, indices = rows_to_device(torch.from_numpy(np.stack([labels, indices]).astype(np.int64)), device)
            with phases.phase("expand"):
                views = self.settings.expander(images)
            yield Batch(views, labels, indices)



def shared_beton(split: ImageSet, settings: LoaderSettings, name: str):
    """Rank 0 writes a missing .beton while the other ranks wait, then every rank checks it."""
    import torch.distributed as dist

    together = settings.world_size > 1 and dist.is_available() and dist.is_initialized()
    if together and settings.rank != 0:
        try:
            dist.barrier()
        except RuntimeError as error:  # the process group's timeout (--dist-timeout-s) ran out
            raise DataError(f"rank {settings.rank} stopped waiting for rank 0 to write the {name} .beton in "
                            f"{settings.cache_dir} ({str(error).splitlines()[0][:120]}): write it beforehand with "
                            "python -m pipeline.make_beton, or raise --dist-timeout-s") from error
    path = beton_for(split, settings.cache_dir, name)
    if together and settings.rank == 0:
        dist.barrier()
    return path
