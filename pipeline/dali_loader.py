"""The DALI loader: one fused pipeline decodes (folders) or gathers (in-memory arrays), pads,
crops and mirrors each image once, on the GPU when there is one (`device_id=None` runs the
same graph on the CPU); the M views are then made by `kernels.expand_views` on the device.

In-memory sources go through `external_source` fed with the shared sharding rule, so a DALI
run sees exactly the images a resident or torch run would. Decoded-folder sources go through
`fn.readers.file` + `fn.decoders.image` ("mixed" = nvJPEG on a GPU), sharded by DALI itself.
Streamed folders (pipeline/streaming.py) feed each file's bytes through `external_source` by the
shared sharding rule, after the byte checks of pipeline/imagenet_crops.py (DALI's decoders stop
the pipeline on a truncated file), and decode with `fn.decoders.image_random_crop` for training
(only the crop's region is decoded) or `fn.decoders.image` + resize + centre crop for evaluation.
"""
from __future__ import annotations

import collections

import numpy as np
import torch

from .batch import Batch, LoaderSettings, rows_to_device
from .datasets import DataError, ImageSet
from .imagenet_crops import RATIO, SCALE, eval_resize_size, load_rgb, read_encoded
from . import phases
from .sharding import shard_indices, steps_in_epoch


def _dali():
    try:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError as error:  # pragma: no cover - DALI is in requirements.txt
        raise ValueError(f"--loader dali needs nvidia-dali-cuda120 ({error})") from None
    return fn, pipeline_def, types, DALIGenericIterator, LastBatchPolicy


class IndexStream:
    """Endless batches of `fetch(indices, epoch)` in the shared sharding order, epoch after epoch.

    DALI prefetches ahead of the consumer, across epoch boundaries too; an endless stream whose
    every epoch is fixed by the seed lets it do so without ever handing out a wrong batch."""

    def __init__(self, num_samples: int, settings: LoaderSettings, first_epoch: int, fetch, first_step: int = 0):
        self.num_samples, self.settings, self.fetch = num_samples, settings, fetch
        self.epoch, self.start = first_epoch, first_step * settings.per_rank_batch
        self.order = shard_indices(num_samples, settings, first_epoch).numpy()

    def __call__(self):
        if self.start >= len(self.order):
            self.epoch += 1
            self.start = 0
            self.order = shard_indices(self.num_samples, self.settings, self.epoch).numpy()
        chunk = self.order[self.start:self.start + self.settings.per_rank_batch]
        self.start += len(chunk)
        return self.fetch(chunk.astype(np.int64), self.epoch)


class EncodedFiles:
    """`IndexStream.fetch` for streamed folders: the files' bytes, labels and indices, without the files
    that are not whole images (counted per epoch, or a DataError under --strict-images) and those a
    decoder already failed on (`undecodable`, found by DaliLoader's recovery)."""

    def __init__(self, split, strict: bool):
        self.files, self.labels, self.strict = split.files, split.labels, strict
        self.skipped: dict[int, set[int]] = {}  # epoch → indices passed over
        self.undecodable: set[int] = set()
        self.fetched: collections.deque = collections.deque()  # the kept indices of batches not yet served
        self.failure: DataError | None = None  # raised in DALI's call of this source: re-raised by the loader

    def __call__(self, indices: np.ndarray, epoch: int):
        encoded, kept = [], []
        for index in indices.tolist():
            data, problem = read_encoded(self.files[index]) if index not in self.undecodable else (b"", "undecodable")
            if problem:
                if self.strict:
                    self.failure = DataError(f"unreadable image {self.files[index]}: {problem} (--strict-images)")
                    raise self.failure
                self.skipped.setdefault(epoch, set()).add(index)
                continue
            encoded.append(np.frombuffer(data, dtype=np.uint8))
            kept.append(index)
        if not kept:
            self.failure = DataError(f"every image of a batch is unreadable, e.g. {self.files[indices[0]]}")
            raise self.failure
        kept = np.asarray(kept, dtype=np.int64)
        self.fetched.append(kept)
        return encoded, self.labels[kept], kept


def crop_and_mirror(images, padding: int, size: tuple[int, int], flip: bool, fn, types):
    """Zero-pad by `padding`, take a random H×W window (one DALI slice) and, where `flip`, mirror half the
    images."""
    anchor = fn.random.uniform(values=[float(v) for v in range(-padding, padding + 1)], shape=2)
    images = fn.slice(images, anchor, types.Constant(np.array(size, np.float32)), axes=(0, 1),
                      normalized_anchor=False, normalized_shape=False, out_of_bounds_policy="pad", fill_values=0)
    return fn.flip(images, horizontal=fn.random.coin_flip()) if flip else images


def random_views_by_operators(images, recipe, size: int, mean, std, fn, types) -> list:
    """`--dali-views operators`: each view of a random-view recipe drawn by DALI's own per-sample operators
    (random_resized_crop, flip, color_twist, gaussian_blur; grayscale as saturation 0, solarisation as
    arithmetic), normalised to CHW float. Differences from the batched pass (pipeline/random_views.py):
    color_twist applies its operations in one fixed order, not each image's random order; grayscale
    zeroes the saturation of its HSV model, not torchvision's luma; and the draws come from DALI's seeded
    generator, so a resumed run does not redraw the same views."""
    views = []
    for spec in recipe:
        view = fn.random_resized_crop(images, size=(size, size), random_area=list(spec.crop_scale),
                                      random_aspect_ratio=list(spec.crop_ratio), interp_type=types.INTERP_LINEAR,
                                      antialias=False)
        view = fn.flip(view, horizontal=fn.random.coin_flip(probability=spec.flip_p))
        jitter = fn.cast(fn.random.coin_flip(probability=spec.jitter_p), dtype=types.FLOAT)

        def factor(spread: float):  # 1 when the jitter is not applied, else uniform on [1 − s, 1 + s]
            return 1.0 + jitter * (fn.random.uniform(range=[1.0 - spread, 1.0 + spread]) - 1.0)

        keep_colour = 1.0 - fn.cast(fn.random.coin_flip(probability=spec.grayscale_p), dtype=types.FLOAT)
        view = fn.color_twist(view, brightness=factor(spec.brightness), contrast=factor(spec.contrast),
                              saturation=factor(spec.saturation) * keep_colour,
                              hue=jitter * fn.random.uniform(range=[-360.0 * spec.hue, 360.0 * spec.hue]))
        if spec.blur_p > 0:
            blur = fn.cast(fn.random.coin_flip(probability=spec.blur_p), dtype=types.FLOAT)
            blurred = fn.gaussian_blur(view, sigma=fn.random.uniform(range=list(spec.blur_sigma)), dtype=types.FLOAT)
            view = blur * blurred + (1.0 - blur) * fn.cast(view, dtype=types.FLOAT)
        if spec.solarize_p > 0:
            solarize = fn.cast(fn.random.coin_flip(probability=spec.solarize_p), dtype=types.FLOAT)
            view = fn.cast(view, dtype=types.FLOAT)
            view = view + solarize * (view >= 128.0) * (255.0 - 2.0 * view)
        views.append(fn.crop_mirror_normalize(view, dtype=types.FLOAT, output_layout="CHW",
                                              mean=[255.0 * m for m in mean], std=[255.0 * s for s in std]))
    return views


class DaliLoader:
    def __init__(self, split: ImageSet, settings: LoaderSettings, *, from_files: bool = False):
        self.split, self.settings = split, settings
        self.streaming = split.streaming
        self.from_files = from_files and bool(split.files) and not self.streaming
        if from_files and not split.files:
            raise ValueError("the DALI file reader needs a folder dataset (--dataset folder)")
        self.num_steps = steps_in_epoch(len(split), settings)
        self.encoded_files = EncodedFiles(split, settings.strict_images) if self.streaming else None
        self.skipped_this_epoch: list[int] = []  # streamed folders: indices of the files passed over
        self.labels = torch.from_numpy(split.labels).to(settings.device)
        self.on_gpu = settings.device.type == "cuda"
        self.iterator, self.next_epoch, self.epoch = None, 0, 0
        if settings.dali_views not in ("batched", "operators"):
            raise ValueError(f"unknown --dali-views {settings.dali_views!r}; valid: batched, operators")
        self.operator_views = (settings.dali_views == "operators" and hasattr(settings.expander, "recipe")
                               and not settings.expander.multi_crop)  # multi-crop: the batched pass
        self.image_outputs = ([f"view{v}" for v in range(len(settings.expander.recipe))] if self.operator_views
                              else ["images"])

    # ---- pipelines
    def _in_memory_pipeline(self, stream: IndexStream):
        fn, pipeline_def, types, _, _ = _dali()
        settings, height, width = self.settings, *self.split.image_shape[:2]

        @pipeline_def
        def graph():
            images, labels, indices = fn.external_source(source=stream, num_outputs=3, batch=True,
                                                         layout=["HWC", "", ""])
            if self.on_gpu:
                images = images.gpu()
            if settings.augment:
                images = crop_and_mirror(images, settings.crop_padding, (height, width), settings.flip, fn, types)
            if self.operator_views:
                return (*self._operator_views(images, fn, types), labels, indices)
            return images, labels, indices

        return graph(**self._pipeline_args())

    def _operator_views(self, images, fn, types) -> list:
        expander = self.settings.expander
        return random_views_by_operators(images, expander.recipe, expander.size, expander.mean, expander.std, fn,
                                         types)

    def _streaming_pipeline(self, stream: IndexStream):
        fn, pipeline_def, types, _, _ = _dali()
        size, crop = self.split.image_size, self.settings.streaming_crop
        decoder_device = "mixed" if self.on_gpu else "cpu"

        @pipeline_def
        def graph():
            encoded, labels, indices = fn.external_source(source=stream, num_outputs=3, batch=True)
            if crop == "random_resized":
                images = fn.decoders.image_random_crop(encoded, device=decoder_device, output_type=types.RGB,
                                                       random_area=list(SCALE), random_aspect_ratio=list(RATIO),
                                                       num_attempts=10)
                images = fn.resize(images, size=(size, size), interp_type=types.INTERP_LINEAR, antialias=True)
                if self.settings.flip:
                    images = fn.flip(images, horizontal=fn.random.coin_flip())
            else:
                images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)
                shorter = eval_resize_size(size) if crop == "evaluation" else size
                images = fn.resize(images, resize_shorter=shorter, interp_type=types.INTERP_LINEAR, antialias=True)
                images = fn.crop(images, crop=(size, size), out_of_bounds_policy="pad")
            if self.operator_views:
                return (*self._operator_views(images, fn, types), labels, indices)
            return images, labels, indices

        return graph(**self._pipeline_args())

    def _file_pipeline(self):
        fn, pipeline_def, types, _, _ = _dali()
        settings, size = self.settings, self.split.image_shape[0]

        @pipeline_def
        def graph():
            encoded, indices = fn.readers.file(
                files=list(self.split.files), labels=list(range(len(self.split))), name="reader",
                shard_id=settings.rank, num_shards=settings.world_size, random_shuffle=settings.train,
                pad_last_batch=True, seed=settings.seed)
            images = fn.decoders.image(encoded, device="mixed" if self.on_gpu else "cpu", output_type=types.RGB)
            # the same geometry as pipeline.datasets.read_image: shorter side to `size`, centre square
            images = fn.resize(images, resize_shorter=size, interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.crop(images, crop=(size, size), out_of_bounds_policy="pad")
            if settings.augment:
                images = crop_and_mirror(images, settings.crop_padding, (size, size), settings.flip, fn, types)
            if self.operator_views:
                return (*self._operator_views(images, fn, types), indices)
            return images, indices

        return graph(**self._pipeline_args())

    def _pipeline_args(self) -> dict:
        return dict(batch_size=self.settings.per_rank_batch, num_threads=self.settings.worker_count(),
                    device_id=(self.settings.device.index or 0) if self.on_gpu else None,
                    seed=self.settings.seed * 1000 + self.settings.rank, prefetch_queue_depth=2,
                    exec_dynamic=True)

    def _build(self, epoch: int, first_step: int = 0):
        _, _, _, iterator_class, policy = _dali()
        if self.from_files:
            pipeline = self._file_pipeline()
            last_batch = policy.DROP if self.settings.train else policy.PARTIAL
            self.iterator = iterator_class(pipeline, [*self.image_outputs, "indices"], reader_name="reader",
                                           last_batch_policy=last_batch, auto_reset=True)
        else:
            if self.streaming:
                self.encoded_files.fetched.clear()
                pipeline = self._streaming_pipeline(IndexStream(len(self.split), self.settings, epoch,
                                                                self.encoded_files, first_step))
            else:
                images, labels = self.split.images, self.split.labels
                pipeline = self._in_memory_pipeline(IndexStream(
                    len(self.split), self.settings, epoch,
                    lambda chunk, _: (images[chunk], labels[chunk], chunk)))
            self.iterator = iterator_class(pipeline, [*self.image_outputs, "labels", "indices"], size=-1,
                                           last_batch_policy=policy.PARTIAL, auto_reset=False,
                                           prepare_first_batch=False)
        self.next_epoch = epoch

    # ---- the loader protocol
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.settings.expander.begin_epoch(epoch)  # stochastic views are drawn per (epoch, step)

    def __len__(self) -> int:
        return self.num_steps if not self.from_files else len(self.iterator_or_build())

    def iterator_or_build(self):
        if self.iterator is None or (self.next_epoch != self.epoch and not self.from_files):
            self._build(self.epoch)  # first use, or a jump (resume): the stream restarts at this epoch
        return self.iterator

    def __iter__(self):
        iterator = self.iterator_or_build()
        self.next_epoch = self.epoch + 1
        if self.encoded_files is not None:
            yield from self._streamed_batches(iterator)
            return
        for _, outputs in zip(range(len(self)), iterator):
            yield self._batch(outputs[0])

    def _streamed_batches(self, iterator):
        """This epoch's batches of a streamed folder. A file that passes the byte checks but stops DALI's decoder
        kills the pipeline: the files of the batch it was making are decoded with PIL, those that fail too are
        skipped from then on, and a new pipeline resumes the epoch at that batch."""
        served = 0
        while served < self.num_steps:
            try:
                outputs = next(iterator)
            except RuntimeError as error:
                self._recover(error, served)
                iterator = self.iterator
                continue
            self.encoded_files.fetched.popleft()
            yield self._batch(outputs[0])
            served += 1
        # this epoch's batches are all made: its count is complete
        self.skipped_this_epoch = sorted(self.encoded_files.skipped.pop(self.epoch, set()))

    def _recover(self, error: RuntimeError, served: int) -> None:
        if self.encoded_files.failure is not None:
            raise self.encoded_files.failure from None
        files = self.split.files
        failed = self.encoded_files.fetched[0].tolist() if self.encoded_files.fetched else []
        undecodable = [index for index in failed if load_rgb(files[index])[0] is None]
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not undecodable:
            raise DataError(f"DALI stopped on a batch whose files PIL decodes ({', '.join(files[i] for i in failed[:3])}"
                            f"{', …' if len(failed) > 3 else ''}): {reason}; --loader torch decodes them with PIL") \
                from None
        if self.settings.strict_images:
            raise DataError(f"unreadable image {files[undecodable[0]]}: neither DALI nor PIL decodes it "
                            "(--strict-images)") from None
        self.encoded_files.undecodable.update(undecodable)
        self.iterator = None
        self._build(self.epoch, first_step=served)

    def _batch(self, out: dict) -> Batch:
        device = self.settings.device
        with phases.phase("copy"):
            images = [out[name].to(device, non_blocking=True) for name in self.image_outputs]
            # labels (streamed files: the reader's) and indices are host tensors: one pinned, non-blocking copy
            host = [out["labels"].reshape(-1)] if "labels" in out else []
            *labels, indices = rows_to_device(torch.stack([*host, out["indices"].reshape(-1)]).to(torch.int64), device)
            labels = labels[0] if labels else self.labels[indices]
        with phases.phase("expand"):
            views = self._operator_batch(images) if self.operator_views else self.settings.expander(images[0])
        return Batch(views, labels, indices)

    def _operator_batch(self, views: list[torch.Tensor]) -> torch.Tensor:
        """V DALI outputs [B, C, S, S] → the interleaved [B·V, C, S, S] layout, the step's dtype and layout."""
        expander = self.settings.expander
        stacked = torch.stack(views, dim=1).flatten(0, 1).to(expander.out_dtype)
        return stacked.contiguous(memory_format=torch.channels_last) if expander.channels_last else stacked
