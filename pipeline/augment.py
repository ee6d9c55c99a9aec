"""Batch augmentation on uint8 [B, H, W, C] tensors, on whatever device they live on.

One gather per batch does pad-and-random-crop and the horizontal flip together; the
random draws come from a CPU generator so that a seed gives the same batch on any device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_and_flip(batch: int, padding: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)  # (top, left) in the padded image
    flips = torch.rand(batch, generator=generator) < 0.5
    return offsets, flips


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by `padding`, crop back to H×W at `offsets`, mirror the rows where `flips`."""
    batch, height, width, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    offsets, flips = offsets.to(images.device), flips.to(images.device)
    rows = offsets[:, :1] + torch.arange(height, device=images.device)  # [B, H]
    column_steps = torch.arange(width, device=images.device)
    column_steps = torch.where(flips[:, None], width - 1 - column_steps, column_steps)
    columns = offsets[:, 1:] + column_steps  # [B, W]
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    return padded[batch_index, rows[:, :, None], columns[:, None, :]]


def random_crop_and_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    offsets, flips = draw_crop_and_flip(images.shape[0], padding, generator)
    return crop_and_flip(images, offsets, flips, padding)
