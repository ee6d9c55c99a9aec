"""Stochastic views for contrastive methods, made for the whole batch in one pass on the training device.

A recipe lists, per view, the distributions of its augmentations (the SimCLR / BYOL / MoCo v2 papers'):
random resized crop, horizontal flip, colour jitter (brightness, contrast, saturation, hue, applied
with probability p in a random order per image), random grayscale, Gaussian blur and solarisation.
`draw(recipe, batch, height, width, generator)` draws every image's and view's parameters from one
torch.Generator on the training device (seeded per run, rank, epoch and step by the caller, so `--resume`
redraws the same views); `render(images, parameters, ...)` applies them to uint8 images [B, H, W, C].
Neither copies anything between host and device nor waits for the device (no `.item()`, no `nonzero`),
so a GPU step is never held up by its views:

    crop + resize + flip   one affine sampling grid per view (bilinear, `grid_sample`), all views at once
    colour jitter          per-image factors, the four operations in each image's own order
    grayscale, solarise    masks
    blur                   a separable Gaussian per image (grouped convolution, reflect padding)

The output is [B·V, C, S, S], row b·V + v being view v of image b (the interleaved layout of
docs/methods.md), normalised, in the step's dtype, channels_last when asked. The colour operations
follow torchvision's definitions (transforms.v2.functional) on [0, 1] images, so that a recipe
written for torchvision means the same here.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .sharding import VIEW_STREAM, derived_seed

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
JITTER_OPERATIONS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation distributions of one view."""
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the source image
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h, sampled log-uniformly
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor drawn from [1 − b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift drawn from [−h, h] (fraction of the hue circle)
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels at the output size
    solarize_p: float = 0.0
    size: int = 0  # output side in pixels; 0: the data's (a global view); smaller: a multi-crop local view


class MultiCropViews(NamedTuple):
    """A multi-crop recipe's views (SwAV): the full-size views [B·G, C, S, S], row b·G + g, and the small
    local views [B·L, C, s, s], row b·L + l (each group interleaved by image, as single-size views are)."""
    global_views: torch.Tensor
    local_views: torch.Tensor


LOCAL_CROP_SCALE = (0.05, 0.14)  # SwAV's multi-crop: small crops of 5–14% of the image...
GLOBAL_CROP_SCALE = (0.14, 1.0)  # ...and the two global crops take the rest of the range


SIMCLR_CIFAR = ViewSpec()  # SimCLR on CIFAR: no blur (the paper blurs only at ImageNet scale)
RECIPES: dict[str, tuple[ViewSpec, ...]] = {
    "simclr": (SIMCLR_CIFAR, SIMCLR_CIFAR),
    # BYOL's two asymmetric views: blur always on the first, rarely on the second; solarise only the second.
    "byol": (ViewSpec(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=1.0),
             ViewSpec(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, blur_p=0.1, solarize_p=0.2)),
    "moco_v2": (ViewSpec(crop_scale=(0.2, 1.0), blur_p=0.5), ViewSpec(crop_scale=(0.2, 1.0), blur_p=0.5)),
    # Deep InfoMax: one view per image, the light augmentation of its CIFAR runs (crop and flip, no colour)
    "dim": (ViewSpec(crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0),),
    # SwAV's global crops (its paper's and solo-learn's jitter strength 0.8/0.8/0.8/0.2); local crops come from
    # `swav+<L>x<s>`
    "swav": (ViewSpec(crop_scale=GLOBAL_CROP_SCALE, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),) * 2,
}


def get_recipe(name: str) -> tuple[ViewSpec, ...]:
    """A named recipe; `<name>+<L>x<s>` appends L local views of side s (multi-crop: crop scale 5–14%, the
    recipe's first view's colour augmentation, no blur)."""
    base, plus, local = name.partition("+")
    if base not in RECIPES:
        raise ValueError(f"unknown view recipe {base!r}; valid: {', '.join(RECIPES)} (optionally +<views>x<size>)")
    if not plus:
        return RECIPES[base]
    count, _, size = local.partition("x")
    if not (count.isdigit() and size.isdigit() and int(count) > 0 and int(size) > 0):
        raise ValueError(f"view recipe {name!r}: local views are written +<count>x<size>, e.g. {base}+6x18")
    local_spec = dataclasses.replace(RECIPES[base][0], crop_scale=LOCAL_CROP_SCALE, blur_p=0.0, solarize_p=0.0,
                                     size=int(size))
    return RECIPES[base] + (local_spec,) * int(count)


def _uniform(low: float, high: float, shape, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64, device=generator.device)


def draw_crop_boxes(spec: ViewSpec, batch: int, height: int, width: int, generator: torch.Generator,
                    attempts: int = 10) -> torch.Tensor:
    """[B, 4] (top, left, crop height, crop width) in pixels, as torchvision's RandomResizedCrop draws them:
    up to `attempts` (area, log-ratio) draws per image, the first that fits kept; otherwise the whole image
    cropped to the nearest allowed ratio, centred."""
    area = height * width
    scale = _uniform(*spec.crop_scale, (batch, attempts), generator) * area
    log_ratio = _uniform(math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]), (batch, attempts), generator)
    ratio = torch.exp(log_ratio)
    crop_w = torch.round(torch.sqrt(scale * ratio))
    crop_h = torch.round(torch.sqrt(scale / ratio))
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    device = generator.device
    first = torch.where(fits.any(1), fits.int().argmax(1), torch.full((batch,), -1, device=device))
    rows = torch.arange(batch, device=device)
    chosen_h, chosen_w = crop_h[rows, first.clamp(min=0)], crop_w[rows, first.clamp(min=0)]
    # fallback: the whole image at the nearest allowed ratio
    in_ratio = width / height
    if in_ratio < min(spec.crop_ratio):
        fallback_w, fallback_h = width, round(width / min(spec.crop_ratio))
    elif in_ratio > max(spec.crop_ratio):
        fallback_h, fallback_w = height, round(height * max(spec.crop_ratio))
    else:
        fallback_h, fallback_w = height, width
    missing = first < 0
    chosen_h = torch.where(missing, torch.full_like(chosen_h, fallback_h), chosen_h)
    chosen_w = torch.where(missing, torch.full_like(chosen_w, fallback_w), chosen_w)
    top = torch.floor(_uniform(0.0, 1.0, batch, generator) * (height - chosen_h + 1))
    left = torch.floor(_uniform(0.0, 1.0, batch, generator) * (width - chosen_w + 1))
    top = torch.where(missing, torch.floor((height - chosen_h) / 2), top)
    left = torch.where(missing, torch.floor((width - chosen_w) / 2), left)
    return torch.stack([top, left, chosen_h, chosen_w], dim=1)


def draw(recipe: tuple[ViewSpec, ...], batch: int, height: int, width: int,
         generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """Per view, every image's augmentation parameters, on the generator's device."""
    views = []
    for spec in recipe:
        def coin(p):
            return torch.rand(batch, generator=generator, device=generator.device) < p

        def factor(spread):
            return _uniform(max(0.0, 1 - spread), 1 + spread, batch, generator).float()

        views.append({
            "box": draw_crop_boxes(spec, batch, height, width, generator),
            "flip": coin(spec.flip_p),
            "jitter": coin(spec.jitter_p),
            "brightness": factor(spec.brightness), "contrast": factor(spec.contrast),
            "saturation": factor(spec.saturation),
            "hue": _uniform(-spec.hue, spec.hue, batch, generator).float(),
            "order": torch.argsort(torch.rand(batch, len(JITTER_OPERATIONS), generator=generator,
                                              device=generator.device), dim=1),
            "grayscale": coin(spec.grayscale_p),
            "blur": coin(spec.blur_p),
            "may_blur": spec.blur_p > 0,  # known from the recipe: render need not ask the device
            "sigma": _uniform(*spec.blur_sigma, batch, generator).float(),
            "solarize": coin(spec.solarize_p),
        })
    return views


# ---------------------------------------------------------------- geometry
def crop_resize_flip(images: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] float → [B, C, size, size]: each image's box resized bilinearly with half-pixel centres and
    source coordinates clamped to the box (what cropping, then torch's interpolate with align_corners=False
    and no antialiasing, computes), mirrored where `flip`; one grid_sample call for the batch."""
    batch, _, height, width = images.shape
    box = box.to(images.device, torch.float32)
    top, left, crop_h, crop_w = (part.view(-1, 1) for part in box.unbind(1))
    steps = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size
    xs = torch.minimum(torch.maximum(left + steps * crop_w - 0.5, left), left + crop_w - 1)  # pixel centres
    ys = torch.minimum(torch.maximum(top + steps * crop_h - 0.5, top), top + crop_h - 1)
    xs = torch.where(flip.to(images.device).view(-1, 1), xs.flip(1), xs)
    x_normalised = (2 * xs + 1) / width - 1  # grid_sample's coordinates, align_corners=False
    y_normalised = (2 * ys + 1) / height - 1
    grid = torch.stack([x_normalised.unsqueeze(1).expand(batch, size, size),
                        y_normalised.unsqueeze(2).expand(batch, size, size)], dim=3)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------- colour, torchvision's definitions
def grayscale(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] → [B, 1, H, W] luma."""
    r, g, b = images.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(first: torch.Tensor, second: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.view(-1, 1, 1, 1)
    return (ratio * first + (1 - ratio) * second).clamp(0, 1)


def adjust_brightness(images, factor):
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images, factor):
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean.expand_as(images), factor)


def adjust_saturation(images, factor):
    return _blend(images, grayscale(images).expand_as(images), factor)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    maximum = images.amax(dim=1)
    minimum = images.amin(dim=1)
    equal = maximum == minimum
    chroma = maximum - minimum
    saturation = chroma / torch.where(equal, torch.ones_like(maximum), maximum)
    safe_chroma = torch.where(equal, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maximum - r) / safe_chroma, (maximum - g) / safe_chroma, (maximum - b) / safe_chroma
    hue = torch.where(maximum == r, bc - gc, torch.where(maximum == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    hue = torch.where(equal, torch.zeros_like(hue), hue)
    return torch.stack([hue, saturation, maximum], dim=1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """The sector formula in closed form: channel n ∈ (5, 3, 1) is v − v·s·clamp(min(k, 4 − k), 0, 1) with
    k = (n + 6h) mod 6 (the same values as torchvision's six-way case split, without building all six)."""
    hue, saturation, value = images.unbind(1)

    def channel(n: float) -> torch.Tensor:
        k = torch.remainder(n + hue * 6.0, 6.0)
        return value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)

    return torch.stack([channel(5.0), channel(3.0), channel(1.0)], dim=1)


def adjust_hue(images, shift):
    hsv = rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


BLENDS = ("brightness", "contrast", "saturation")  # each blends the image with a target by its factor


def colour_jitter(images: torch.Tensor, view: dict) -> torch.Tensor:
    """The four adjustments on the images whose `jitter` coin came up, each image in its own order. At each of
    the four positions every image takes one blend (brightness, contrast and saturation differ only in the
    target they blend towards, picked per image; an image not adjusted there blends with factor 1, which leaves
    it unchanged exactly) and the hue shift where it is that image's turn: no host round trip to split the
    batch by operation."""
    order = view["order"]
    out = images
    for position in range(len(JITTER_OPERATIONS)):
        chosen = [view["jitter"] & (order[:, position] == index) for index in range(len(JITTER_OPERATIONS))]
        brightness, contrast, saturation, hue = (c.view(-1, 1, 1, 1) for c in chosen)
        gray = grayscale(out)
        target = torch.where(contrast, gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(out),
                             torch.where(saturation, gray.expand_as(out), torch.zeros_like(out)))
        factor = torch.ones_like(view["brightness"])
        for name, mask in zip(BLENDS, chosen):
            factor = torch.where(mask, view[name], factor)
        out = torch.where(brightness | contrast | saturation, _blend(out, target, factor), out)
        out = torch.where(hue, adjust_hue(out, view["hue"]), out)
    return out


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Each image blurred with its own σ: a separable Gaussian of `kernel_size` taps, reflect padding
    (torchvision's gaussian_blur)."""
    batch, channels, height, width = images.shape
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x.view(1, -1) / sigma.to(images).view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # [B·C, k]
    flat = images.reshape(1, batch * channels, height, width)
    pad = kernel_size // 2
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, kernel_size),
                    groups=batch * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel.view(-1, 1, kernel_size, 1),
                    groups=batch * channels)
    return flat.view(batch, channels, height, width)


def blur_kernel_size(size: int) -> int:
    """About a tenth of the image side, odd (the SimCLR paper's choice), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


@functools.lru_cache(maxsize=16)
def channel_tensors(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's [1, C, 1, 1] mean and std on `device`, made once (not copied there every step)."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def render(images: torch.Tensor, views: list[dict], size: int, mean, std, out_dtype=torch.float32,
           channels_last: bool = True) -> torch.Tensor:
    """uint8 [B, H, W, C] on the device → [B·V, C, size, size], row b·V + v = view v of image b."""
    source = images.permute(0, 3, 1, 2).float().div_(255.0)
    rendered = []
    for view in views:
        out = crop_resize_flip(source, view["box"], view["flip"], size).clamp_(0, 1)
        out = colour_jitter(out, view)
        out = torch.where(view["grayscale"].view(-1, 1, 1, 1), grayscale(out).expand_as(out), out)
        if view["may_blur"]:
            out = torch.where(view["blur"].view(-1, 1, 1, 1),
                              gaussian_blur(out, view["sigma"], blur_kernel_size(size)), out)
        out = torch.where(view["solarize"].view(-1, 1, 1, 1) & (out >= 0.5), 1.0 - out, out)
        rendered.append(out)
    stacked = torch.stack(rendered, dim=1).flatten(0, 1)  # [B·V, C, S, S], interleaved
    mean_t, std_t = channel_tensors(tuple(mean), tuple(std), stacked.device)
    normalised = ((stacked - mean_t) / std_t).to(out_dtype)
    return normalised.contiguous(memory_format=torch.channels_last) if channels_last else normalised


def view_generator(seed: int, rank: int, epoch: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for one step's views, on the training device: a function of (seed, rank, epoch, step) and
    the device kind only, so ranks draw different views and a resumed run draws the same ones."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(seed, epoch, rank, VIEW_STREAM, step))
    return generator


class RandomViewExpander:
    """The contrastive loaders' last stage, in place of pipeline.views.ViewExpander: uint8 [B, H, W, C] on the
    device → V stochastic views [B·V, C, S, S], drawn from a generator seeded by (seed, rank, epoch, step)."""

    def __init__(self, recipe: tuple[ViewSpec, ...], size: int, mean, std, out_dtype=torch.float32,
                 channels_last: bool = True, seed: int = 0, rank: int = 0):
        self.recipe, self.size, self.mean, self.std = recipe, size, mean, std
        self.out_dtype, self.channels_last, self.seed, self.rank = out_dtype, channels_last, seed, rank
        self.epoch, self.step = 0, 0
        sizes = list(dict.fromkeys([size] + [spec.size or size for spec in recipe]))  # the data's size first
        if len(sizes) > 2:
            raise ValueError("a multi-crop recipe has two sizes: the data's and one local size")
        # (output size, its views): one group, or multi-crop's global and local groups
        self.groups = [(side, tuple(spec for spec in recipe if (spec.size or size) == side)) for side in sizes]

    @property
    def num_views(self) -> int:
        return len(self.recipe)

    @property
    def full_size_equivalent_views(self) -> float:
        """Views per image weighted by their pixels against a full-size view (for MFU: a 14-px crop of a
        32-px image costs about (14/32)² of a full view's convolutions)."""
        return sum(((spec.size or self.size) / self.size) ** 2 for spec in self.recipe)

    @property
    def multi_crop(self) -> bool:
        return len(self.groups) > 1

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor | MultiCropViews:
        """One pass per output size (multi-crop: the global views, then the local ones), all drawn from this
        step's generator in that order."""
        batch, height, width, _ = images.shape
        generator = view_generator(self.seed, self.rank, self.epoch, self.step, images.device)
        self.step += 1
        rendered = [render(images, draw(specs, batch, height, width, generator), side, self.mean, self.std,
                           self.out_dtype, self.channels_last) for side, specs in self.groups]
        return rendered[0] if len(rendered) == 1 else MultiCropViews(*rendered)
