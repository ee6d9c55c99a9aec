"""The reference way of making contrastive views, for `python -m train.commands.bench step --method simclr|swav|...`: a torch
DataLoader whose workers augment one PIL image at a time, as the papers' code and solo-learn's default
pipeline do (torchvision's transforms are PIL operations underneath; torchvision itself does not install
beside this torch build, so the same operations are written with PIL here). Same recipe, same
distributions as pipeline/random_views.py; fp32, NCHW."""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from pipeline.random_views import ViewSpec


def random_resized_crop(image: Image.Image, spec: ViewSpec, size: int, rng: random.Random) -> Image.Image:
    width, height = image.size
    for _ in range(10):
        area = width * height * rng.uniform(*spec.crop_scale)
        ratio = math.exp(rng.uniform(math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    return image.resize((size, size), Image.BILINEAR)


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def augment(image: Image.Image, spec: ViewSpec, size: int, rng: random.Random) -> Image.Image:
    image = random_resized_crop(image, spec, size, rng)
    if rng.random() < spec.flip_p:
        image = ImageOps.mirror(image)
    if rng.random() < spec.jitter_p:
        operations = [
            lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(1 - spec.brightness, 1 + spec.brightness)),
            lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(1 - spec.contrast, 1 + spec.contrast)),
            lambda im: ImageEnhance.Color(im).enhance(rng.uniform(1 - spec.saturation, 1 + spec.saturation)),
            lambda im: shift_hue(im, rng.uniform(-spec.hue, spec.hue)),
        ]
        rng.shuffle(operations)
        for operation in operations:
            image = operation(image)
    if rng.random() < spec.grayscale_p:
        image = image.convert("L").convert("RGB")
    if rng.random() < spec.blur_p:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*spec.blur_sigma)))
    if rng.random() < spec.solarize_p:
        image = ImageOps.solarize(image, 128)
    return image


class PilViewDataset(torch.utils.data.Dataset):
    """Item i: the V views of image i as one float32 NCHW tensor [V, C, S, S], normalised (multi-crop: a
    pair, the global [G, C, S, S] and the local [L, C, s, s]), and its label."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, recipe: tuple[ViewSpec, ...], mean, std, seed: int):
        self.images, self.labels, self.recipe, self.seed = images, labels, recipe, seed
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.calls = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        rng = random.Random(f"{self.seed}:{index}:{self.calls}")  # a fresh draw per call (per worker)
        self.calls += 1
        image = Image.fromarray(self.images[index])
        groups: dict[int, list[torch.Tensor]] = {}  # by output size: the global views, then multi-crop's local
        for spec in self.recipe:
            size = spec.size or image.size[0]
            pixels = np.asarray(augment(image, spec, size, rng), dtype=np.float32) / 255.0
            groups.setdefault(size, []).append((torch.from_numpy(pixels).permute(2, 0, 1) - self.mean) / self.std)
        views = tuple(torch.stack(group) for group in groups.values())
        return (views[0] if len(views) == 1 else views), int(self.labels[index])


def pil_view_loader(images: np.ndarray, labels: np.ndarray, recipe, mean, std, batch: int, workers: int,
                    seed: int = 0, persistent_workers: bool = True) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(PilViewDataset(images, labels, recipe, mean, std, seed), batch_size=batch,
                                       shuffle=True, drop_last=True, num_workers=workers,
                                       persistent_workers=persistent_workers and workers > 0,
                                       # workers from a fork server, never forked from this multi-threaded
                                       # process (pipeline/torch_loader.py)
                                       multiprocessing_context="forkserver" if workers > 0 else None,
                                       generator=torch.Generator().manual_seed(seed))
