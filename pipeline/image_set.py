"""The bottom of the data modules: a split of decoded images (`ImageSet`), the splits of a run, the one
error types for bad data and for a file that could not be written, and the label check every source applies."""
from __future__ import annotations

import errno
from dataclasses import dataclass, field, replace

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(ValueError):
    """A dataset is missing, damaged or inconsistent; the message says which file and what to do."""


class WriteError(OSError):
    """A file the run writes could not be written (a full disk, a size limit); the message names the file, the
    cause and what was kept."""

    def __str__(self) -> str:
        return self.args[0]


def write_error(path, error: OSError, kept: str = "") -> WriteError:
    reasons = {errno.ENOSPC: "no space left on device", errno.EFBIG: "the file size limit was reached",
               errno.EDQUOT: "the disk quota is used up"}
    reason = reasons.get(error.errno) or error.strerror or str(error)
    return WriteError(f"could not write {path}: {reason}" + (f"; {kept}" if kept else ""))


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [n, H, W, 3]
    labels: np.ndarray  # int64 [n], in [0, num_classes)
    num_classes: int
    class_names: list[str]
    skipped_files: list[str] = field(default_factory=list)  # unreadable images passed over
    files: tuple[str, ...] = ()  # for folder data: the file of each image, for loaders that decode themselves
    coarse_labels: np.ndarray | None = None  # CIFAR-100: each image's superclass, as the archive gives it
    coarse_names: tuple[str, ...] = ()
    fine_labels: np.ndarray | None = None  # under grouped primary labels: each image's original class, numbered
    # in block order (group g's classes are fine labels start_g .. start_g + size_g − 1; pipeline/label_groups.py)

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 [n, H, W, C]; got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        check_labels(self.labels, self.num_classes)
        if self.files and len(self.files) != len(self.labels):
            raise DataError(f"{len(self.files)} file names for {len(self.labels)} images")

    streaming = False  # the decoded pixels are here (pipeline/streaming.py holds the other kind)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def joined(self, other: "ImageSet") -> "ImageSet":
        """This set's images followed by `other`'s (decoded sets of the same classes)."""
        join = lambda a, b: None if a is None else np.concatenate([a, b])  # noqa: E731
        return replace(self, images=np.concatenate([self.images, other.images]),
                       labels=np.concatenate([self.labels, other.labels]), files=self.files + other.files,
                       coarse_labels=join(self.coarse_labels, other.coarse_labels),
                       fine_labels=join(self.fine_labels, other.fine_labels))

    def subset(self, indices: np.ndarray) -> "ImageSet":
        files = tuple(self.files[i] for i in indices) if self.files else ()
        pick = lambda labels: None if labels is None else labels[indices]  # noqa: E731
        return replace(self, images=self.images[indices], labels=self.labels[indices], files=files,
                       coarse_labels=pick(self.coarse_labels), fine_labels=pick(self.fine_labels))


@dataclass
class DatasetSplits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: tuple[float, float, float]  # per channel, on the [0, 1] scale
    std: tuple[float, float, float]
    group_sizes: tuple[int, ...] = ()  # under grouped primary labels: fine classes per primary class

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataError(f"label {int(bad[0])} is outside [0, {num_classes}) for {num_classes} classes")
