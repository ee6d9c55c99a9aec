"""FFCV .beton files of a dataset split, with a fingerprint of the source next to each one.

A .beton holds three fields: `image` (RGB, raw or JPEG), `label` and `index` (the image's
position in the split, so loaders can say which images they served). The fingerprint (a
SHA-256 of the split's pixels, labels and shape; for a streamed folder, of its files' names,
sizes and times and the stored resolution) is written to `<file>.json`; a loader refuses a
.beton whose fingerprint does not match the split it was asked to serve.

A streamed folder is written file by file in FFCV's worker processes (memory stays bounded),
each image at its own size, the longer side capped at `max_resolution`. A file that cannot be
decoded is written as a blank 8×8 row with label −1, which the loader drops and counts: rows
keep their positions, so the ranks' shards never shift. The writing itself happens in a process
of its own (pipeline/beton_writer.py says why).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .beton_writer import UNREADABLE, write_in_new_process
from .datasets import DataError, ImageSet

WRITE_MODES = ("raw", "jpg")


def fingerprint(split: ImageSet, max_resolution: int | None = None) -> str:
    if split.streaming:
        from .streaming import listing_fingerprint

        return hashlib.sha256(f"{listing_fingerprint(split)} max {max_resolution}".encode()).hexdigest()
    digest = hashlib.sha256()
    digest.update(repr((split.images.shape, split.num_classes)).encode())
    digest.update(np.ascontiguousarray(split.images).data)
    digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).data)
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def write_beton(split: ImageSet, path: Path, write_mode: str = "raw", jpeg_quality: int = 95,
                workers: int = 1, max_resolution: int | None = None, digest: str = "") -> Path:
    """Write `split` to `path` (atomically: a half-written file never carries the final name); `digest`: the
    split's fingerprint when the caller has it already (a streamed folder's stats every file)."""
    if write_mode not in WRITE_MODES:
        raise ValueError(f"unknown write mode {write_mode!r}; valid: {', '.join(WRITE_MODES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write_in_new_process(split, partial, write_mode, jpeg_quality, workers, max_resolution, path)
    meta = {"fingerprint": digest or fingerprint(split, max_resolution), "num_images": len(split),
            "shape": list(split.image_shape), "num_classes": split.num_classes, "write_mode": write_mode,
            "max_resolution": max_resolution}
    partial_meta = sidecar(partial)
    partial_meta.write_text(json.dumps(meta, indent=1))
    os.replace(partial, path)
    os.replace(partial_meta, sidecar(path))
    return path


def check_beton(path: Path, split: ImageSet, expected: str = "") -> None:
    """Refuse a .beton made from other data than `split` (`expected`: its fingerprint, when already made)."""
    meta_path = sidecar(Path(path))
    if not meta_path.is_file():
        raise DataError(f"{path} has no fingerprint file {meta_path.name}; re-create it with python -m pipeline.make_beton")
    meta = json.loads(meta_path.read_text())
    expected = expected or fingerprint(split, meta.get("max_resolution"))  # a user's make_beton picks its own
    if meta.get("fingerprint") != expected:
        raise DataError(f"{path} was made from different data (fingerprint {str(meta.get('fingerprint'))[:12]}…, "
                        f"{meta.get('num_images')} images) than this run's split (fingerprint {expected[:12]}…, "
                        f"{len(split)} images); delete it or re-create it with python -m pipeline.make_beton")


def beton_for(split: ImageSet, cache_dir: str, name: str, write_mode: str = "raw") -> Path:
    """The .beton a loader reads for a split. `<cache_dir>/<name>.beton` (as `python -m
    pipeline.make_beton` names them) is used when present and must match the split; otherwise a
    cache file keyed by the split's fingerprint is written on first use (a streamed folder as JPEG,
    the longer side capped at twice the evaluation resize, 512 for 224-pixel crops: ImageNet's
    photographs keep their resolution, and the evaluation crop its detail)."""
    made_by_user = Path(cache_dir) / f"{name}.beton"
    if made_by_user.exists():
        check_beton(made_by_user, split)
        return made_by_user
    max_resolution = None
    if split.streaming:
        from .imagenet_crops import eval_resize_size

        write_mode, max_resolution = "jpg", 2 * eval_resize_size(split.image_size)
    digest = fingerprint(split, max_resolution)
    cached = Path(cache_dir) / f"{name}-{digest[:12]}.beton"
    if not cached.exists() or not sidecar(cached).exists():
        write_beton(split, cached, write_mode, max_resolution=max_resolution,
                    workers=(os.cpu_count() or 1) if split.streaming else 1, digest=digest)
    check_beton(cached, split, digest)
    return cached
