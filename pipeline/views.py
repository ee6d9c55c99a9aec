"""The last stage of every loader: uint8 [B, H, W, C] on the device → M normalised views [B·M, C, H, W]."""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels


@dataclass
class ViewExpander:
    family: kernels.TransformFamily
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    out_dtype: torch.dtype = torch.float32
    channels_last: bool = True
    backend: str = "auto"

    def begin_epoch(self, epoch: int) -> None:
        """The family's views are the same every epoch (pipeline/random_views.py's expander draws per epoch)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return kernels.expand_views(images, self.family, mean=self.mean, std=self.std, out_dtype=self.out_dtype,
                                    channels_last=self.channels_last, backend=self.backend)

    def gather(self, dataset: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
               padding: int) -> torch.Tensor:
        """A training batch's views straight from the resident uint8 dataset: the images at `indices`, cropped
        and mirrored, then the family's views, in one pass (kernels.gather_expand_views)."""
        return kernels.gather_expand_views(dataset, indices, offsets, flips, padding, self.family, mean=self.mean,
                                           std=self.std, out_dtype=self.out_dtype, channels_last=self.channels_last,
                                           backend=self.backend)
