"""The last stage of every loader: uint8 [B, H, W, C] on the device → M normalised views [B·M, C, H, W].

On a CPU the float32 views of a batch are large (616 MB for 256 images of 224² at M = 4) and a fresh
buffer per batch spent half the expansion in page faults; the expander therefore writes into a buffer
of an earlier batch once nothing holds it any more: no tensor, view or autograd record of it is left
(its Python object and its storage are referenced only by the pool). A consumer that keeps batches
keeps their buffers, and the pool allocates new ones.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

import kernels

POOLED_BUFFERS = 3  # at most this many recycled outputs: the batch in use, the one being made, one spare


def unused(buffers: list, index: int) -> bool:
    """True when only `buffers` holds buffers[index]: its Python object and its storage (the object's 3 are the
    list, the local name and getrefcount's argument; the storage's 2 are the tensor and the temporary handle)."""
    tensor = buffers[index]
    return sys.getrefcount(tensor) == 3 and torch._C._storage_Use_Count(tensor.untyped_storage()._cdata) == 2


@dataclass
class ViewExpander:
    family: kernels.TransformFamily
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    out_dtype: torch.dtype = torch.float32
    channels_last: bool = True
    backend: str = "auto"
    reuse_buffers: bool = True  # CPU float32 views: recycle free output buffers (module docstring)
    _buffers: list = field(default_factory=list, init=False, repr=False, compare=False)

    def begin_epoch(self, epoch: int) -> None:
        """The family's views are the same every epoch (pipeline/random_views.py's expander draws per epoch)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = None
        if (self.reuse_buffers and images.device.type == "cpu" and self.out_dtype == torch.float32
                and kernels.backend_for_device(self.backend, images.device) == "cpu"):
            out = self._free_buffer(images)
        return kernels.expand_views(images, self.family, mean=self.mean, std=self.std, out_dtype=self.out_dtype,
                                    channels_last=self.channels_last, backend=self.backend, out=out)

    def _free_buffer(self, images: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = images.shape
        shape = (batch * self.family.num_transforms, channels, height, width)
        for index in range(len(self._buffers)):
            if tuple(self._buffers[index].shape) == shape and unused(self._buffers, index):
                return self._buffers[index]
        fresh = torch.empty(shape, dtype=torch.float32,
                            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if len(self._buffers) < POOLED_BUFFERS:
            self._buffers.append(fresh)
        return fresh
