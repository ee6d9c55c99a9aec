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

    def bind_gather(self, dataset: torch.Tensor, padding: int):
        """The training batches' views straight from a resident uint8 dataset, bound once: a callable taking a
        batch's (indices, crop offsets, flips) that crops, mirrors and makes the family's views in one pass
        (kernels.bind_view_gather)."""
        return kernels.bind_view_gather(dataset, padding, self.family, mean=self.mean, std=self.std,
                                        out_dtype=self.out_dtype, channels_last=self.channels_last,
                                        backend=self.backend)
