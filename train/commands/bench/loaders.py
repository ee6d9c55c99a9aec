"""`python -m train.commands.bench loader`: every loader in one process, source images/s and views/s at M
views per image, on CIFAR-shaped arrays and on a folder of JPEG files, against the `torch`
DataLoader reference at the same core count."""
from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import kernels
from pipeline.batch import LoaderSettings
from pipeline.datasets import ImageSet, channel_statistics, load_image_folder
from pipeline.loaders import LOADERS, build_loader
from pipeline.random_views import RandomViewExpander, get_recipe
from pipeline.views import ViewExpander
from train.commands.bench.common import append_json_lines, available_cores, bench_device, device_name, print_header


def cifar_shaped(num_images: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8)
    return ImageSet(images, rng.integers(0, 10, num_images).astype(np.int64), 10, [str(i) for i in range(10)])


def jpeg_folder(root: Path, num_images: int, size: int = 32, seed: int = 0) -> Path:
    """Smooth random images (JPEG-friendly, like photos), `num_images` over 10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(num_images):
        folder = root / f"class_{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.BILINEAR).save(folder / f"{index}.jpg", quality=90)
    return root


LOADER_PACKAGES = {"dali": "nvidia.dali", "dali_ops": "nvidia.dali", "ffcv": "ffcv"}


def loader_installed(name: str) -> bool:
    """A loader whose package is missing is left out of the table with a line saying so, not a traceback."""
    package = LOADER_PACKAGES.get(name)
    try:
        found = package is None or importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # nvidia.dali when the nvidia namespace itself is absent
        found = False
    if not found:
        print(f"{name}: not timed ({package} is not installed)")
    return found


def time_loader(name: str, split: ImageSet, settings: LoaderSettings, epochs: int) -> dict:
    start = time.perf_counter()
    if name == "dali_ops":  # the dali loader with DALI's own random-view operators (--dali-views operators)
        name, settings = "dali", dataclasses.replace(settings, dali_views="operators")
    loader = build_loader(name, split, settings, split_name=f"bench-{len(split)}")
    loader.set_epoch(0)
    for _ in loader:  # warm-up epoch: compilation, worker start, page cache
        pass
    setup = time.perf_counter() - start
    images = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        for batch in loader:
            images += len(batch.labels)
    if settings.device.type == "cuda":
        torch.cuda.synchronize(settings.device)
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "seconds": seconds, "images": images, "setup_s": setup}


def run(num_images: int = 8192, folder_images: int = 2048, batch: int = 256, epochs: int = 2,
        transforms: str = "rotation", loaders: tuple[str, ...] = LOADERS, output: str | None = None,
        views: str = "") -> list[dict]:
    """`views` (a recipe of pipeline/random_views.py) times each loader with the contrastive methods'
    stochastic view pass in place of the family's M views."""
    device, cores = bench_device(), available_cores()
    family = kernels.get_family(transforms)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    views_per_image = len(get_recipe(views)) if views else family.num_transforms
    what = f"random views {views} ×{views_per_image}" if views else f"{transforms} M={family.num_transforms}"
    print(f"device {device_name(device)}, {cores} cores, "
          f"batch {batch}, {what}, views {dtype}, {epochs} timed epochs after one warm-up")
    print_header(f"{'data':<14}{'loader':<10}{'images/s':>11}{'views/s':>12}{'vs torch':>10}{'setup s':>9}")
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        sources = {"cifar-shaped": lambda: cifar_shaped(num_images)}
        if folder_images:
            def folder():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return load_image_folder(jpeg_folder(Path(scratch) / "jpeg", folder_images), 32)
            sources["jpeg-folder"] = folder
        for data_name, make in sources.items():
            split = make()
            mean, std = channel_statistics(split.images)
            if views:  # the recipe crops and flips: the loaders' own crop is off
                expander = RandomViewExpander(get_recipe(views), split.images.shape[1], mean, std, dtype)
                settings = LoaderSettings(expander, device, batch, train=True, crop_padding=-1,
                                          cache_dir=str(Path(scratch) / "betons"))
            else:
                settings = LoaderSettings(ViewExpander(family, mean, std, dtype), device, batch, train=True,
                                          cache_dir=str(Path(scratch) / "betons"))
            names = [name for name in loaders + (("dali_ops",) if views and "dali" in loaders else ())
                     if loader_installed(name)]
            results = {name: time_loader(name, split, settings, epochs) for name in names}
            baseline = results.get("torch", {}).get("images_per_s")
            for name, result in results.items():
                record = {"benchmark": "loader", "data": data_name, "loader": name, "device": str(device),
                          "cores": cores, "batch": batch, "num_transforms": views_per_image,
                          "view_recipe": views or None, "images_per_s": round(result["images_per_s"], 1),
                          "views_per_s": round(result["images_per_s"] * views_per_image, 1),
                          "vs_torch": round(result["images_per_s"] / baseline, 2) if baseline else None,
                          "setup_s": round(result["setup_s"], 2),
                          "decodes_files": name in ("dali", "dali_ops") and bool(split.files)}
                records.append(record)
                ratio = f"{record['vs_torch']:.2f}x" if baseline else "-"
                print(f"{data_name:<14}{name:<10}{record['images_per_s']:>11,.0f}{record['views_per_s']:>12,.0f}"
                      f"{ratio:>10}{record['setup_s']:>9.1f}")
    print("jpeg-folder: dali decodes the files every epoch; the others read the images decoded once at load time")
    append_json_lines(output, records)
    return records
