"""Generated ImageNet-style folders (`root/train/<class>/*.jpg`, `root/val/<class>/*.jpg`) for the
streaming benchmark and tests: smooth random colour fields with fine noise, so that JPEG sizes and
decode times are those of photographs rather than of flat or pure-noise images; sizes and aspect
ratios vary per image. `odd_files` adds one grayscale JPEG, one CMYK JPEG, one PNG with alpha and
one truncated JPEG to the first class of the training tree."""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def synthetic_photo(rng: np.random.Generator, width: int, height: int, noise: float = 8.0):
    from PIL import Image

    coarse = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.normal(0, noise, smooth.shape).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _write_class(job: tuple) -> int:
    folder, label, count, seed, mean_size, spread, quality, noise = job
    rng = np.random.default_rng((seed, label))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        width = int(np.clip(rng.normal(mean_size[0], spread * mean_size[0]), 0.4 * mean_size[0], 2 * mean_size[0]))
        height = int(np.clip(rng.normal(mean_size[1], spread * mean_size[1]), 0.4 * mean_size[1], 2 * mean_size[1]))
        synthetic_photo(rng, width, height, noise).save(folder / f"{k:06d}.jpg", quality=quality)
    return count


def make_jpeg_folder(root: str | Path, train_images: int, val_images: int = 0, classes: int = 10,
                     mean_size: tuple[int, int] = (400, 350), spread: float = 0.2, quality: int = 90, seed: int = 0,
                     odd_files: bool = False, noise: float = 8.0, workers: int = 0) -> Path:
    """Writes the folder once; a `done.json` marker with these arguments makes later calls return at once."""
    root = Path(root)
    arguments = dict(train_images=train_images, val_images=val_images, classes=classes, mean_size=list(mean_size),
                     spread=spread, quality=quality, seed=seed, odd_files=odd_files, noise=noise)
    marker = root / "done.json"
    if marker.is_file() and json.loads(marker.read_text()) == arguments:
        return root
    jobs = []
    for tree, total, tree_seed in (("train", train_images, seed), ("val", val_images, seed + 1)):
        for label in range(classes if total else 0):
            count = total // classes + (label < total % classes)
            jobs.append((root / tree / f"class_{label:04d}", label, count, tree_seed, mean_size, spread, quality,
                         noise))
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_class, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        list(map(_write_class, jobs))
    if odd_files:
        write_odd_files(root / "train" / "class_0000", np.random.default_rng(seed))
    marker.write_text(json.dumps(arguments))
    return root


def write_odd_files(folder: Path, rng: np.random.Generator) -> list[Path]:
    """A grayscale JPEG, a CMYK JPEG, an RGBA PNG and a truncated JPEG (the one unreadable file)."""
    photo = synthetic_photo(rng, 90, 70)
    paths = [folder / "odd_grey.jpg", folder / "odd_cmyk.jpg", folder / "odd_alpha.png", folder / "odd_truncated.jpg"]
    photo.convert("L").save(paths[0], quality=90)
    photo.convert("CMYK").save(paths[1], quality=90)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(paths[2])
    photo.save(paths[3], quality=90)
    paths[3].write_bytes(paths[3].read_bytes()[:600])
    return paths
