"""Image folders too large to decode whole: a cached file listing, decoded per sample, per epoch.

`StreamingImageSet` holds file names and labels only; loaders decode each file when a batch needs
it (pipeline/imagenet_crops.py says how). The listing of a folder is cached as JSON under the
cache folder, with the modification time of every directory it walked as its fingerprint: adding,
removing or renaming a file changes its directory's time, so a stale listing is never used
(a file rewritten in place keeps its directory's time, and its new bytes are simply decoded).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .image_set import IMAGE_SUFFIXES, DataError, check_labels

# ImageNet's channel statistics: a streamed set is not decoded up front to measure its own
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IN_MEMORY_CHOICES = ("auto", "yes", "no")
IN_MEMORY_SHARE = 0.25  # auto: decode up front when the decoded splits take at most this share of free memory


@dataclass
class StreamingImageSet:
    files: tuple[str, ...]  # one image file per sample
    labels: np.ndarray  # int64 [n], in [0, num_classes)
    num_classes: int
    class_names: list[str]
    image_size: int  # the side of the square crops the loaders make
    skipped_files: list[str] = field(default_factory=list)  # always empty: unreadable files are met per epoch
    coarse_labels: np.ndarray | None = None
    coarse_names: tuple[str, ...] = ()
    fine_labels: np.ndarray | None = None

    streaming = True  # loaders decode per sample

    def __post_init__(self):
        if len(self.files) != len(self.labels):
            raise DataError(f"{len(self.files)} files but {len(self.labels)} labels")
        check_labels(self.labels, self.num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.image_size, self.image_size, 3

    def subset(self, indices: np.ndarray) -> "StreamingImageSet":
        pick = lambda labels: None if labels is None else labels[indices]  # noqa: E731
        return replace(self, files=tuple(self.files[i] for i in indices), labels=self.labels[indices],
                       coarse_labels=pick(self.coarse_labels), fine_labels=pick(self.fine_labels))


# ---------------------------------------------------------------------------- listing
def _walk(root: Path, exclude: str = "") -> tuple[list[str], list[str], list[int], dict[str, int]]:
    """Class names, files and labels of `root/<class>/**/<image>`, and each walked directory's mtime;
    `exclude` (the cache folder, when it lies inside root) is not a class."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    directory_times = {str(root): os.stat(root).st_mtime_ns}
    class_dirs = sorted(entry.path for entry in os.scandir(root)
                        if entry.is_dir() and not (exclude and os.path.realpath(entry.path) == exclude))
    if not class_dirs:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found, pending = [], [class_dir]
        while pending:  # os.scandir, not Path.rglob: a million entries list several times faster
            directory = pending.pop()
            directory_times[directory] = os.stat(directory).st_mtime_ns
            for entry in os.scandir(directory):
                if entry.is_dir():
                    pending.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    found.append(entry.path)
        if not found:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        found.sort()
        files.extend(found)
        labels.extend([label] * len(found))
    return [os.path.basename(d) for d in class_dirs], files, labels, directory_times


def _still_valid(directory_times: dict[str, int]) -> bool:
    try:
        return all(os.stat(d).st_mtime_ns == t for d, t in directory_times.items())
    except OSError:
        return False


def listing_cache_path(root: Path, cache_dir: str) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"listing-{root.name}-{key}.json"


def list_folder(root: str | Path, cache_dir: str = "") -> tuple[list[str], list[str], np.ndarray]:
    """(class names, files, labels) of an image folder; reuses `cache_dir`'s listing while it is valid."""
    root = Path(root)
    cache = listing_cache_path(root, cache_dir) if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if _still_valid(cached["directory_times"]):
                return cached["class_names"], cached["files"], np.asarray(cached["labels"], dtype=np.int64)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: list again and rewrite it
    class_names, files, labels, directory_times = _walk(root, os.path.realpath(cache_dir) if cache_dir else "")
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps({"root": str(root.resolve()), "class_names": class_names, "files": files,
                                           "labels": labels, "directory_times": directory_times}))
            os.replace(partial, cache)  # atomic: another rank never reads half a listing
        except OSError:
            pass  # a read-only cache folder costs a listing per run, nothing else
    return class_names, files, np.asarray(labels, dtype=np.int64)


def streaming_folder(listing: tuple[list[str], list[str], np.ndarray], image_size: int) -> StreamingImageSet:
    """The split of a `list_folder` listing, decoded by the loaders."""
    class_names, files, labels = listing
    return StreamingImageSet(tuple(files), labels, len(class_names), class_names, image_size)


def listing_fingerprint(split: StreamingImageSet) -> str:
    """SHA-256 of the split's files (names, sizes, modification times), labels and crop size."""
    digest = hashlib.sha256(repr((split.image_size, split.num_classes, len(split))).encode())
    for path in split.files:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- in memory or streamed
def available_memory_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def decode_in_memory(choice: str, num_files: int, image_size: int) -> bool:
    """`--data-in-memory`: yes, no, or auto (decoded uint8 size against a share of free memory)."""
    if choice not in IN_MEMORY_CHOICES:
        raise DataError(f"unknown --data-in-memory {choice!r}; valid: {', '.join(IN_MEMORY_CHOICES)}")
    if choice != "auto":
        return choice == "yes"
    return num_files * image_size * image_size * 3 <= IN_MEMORY_SHARE * available_memory_bytes()

