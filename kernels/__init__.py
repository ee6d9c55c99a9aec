"""Public API of the joint-label kernels; other packages import only from here.

Math and layout: docs/methods.md (interleaved rows b·M+j, joint label y·M+j).
`backend`: "torch" (composite reference), "cpu" (Numba), "cuda" (numba-cuda), "auto"
(from the tensor's device; `backend_for_device` decides it once for a run).
Precision: the torch and cpu backends compute float64 inputs in float64; the cuda kernels compute in
float32 and refuse float64 inputs rather than round them silently.
"""
from __future__ import annotations

import functools

import torch

from . import ops, reference
from .reference import upcast
from .ops import raise_pending_label_error
from .families import FAMILIES, TransformFamily, get_family


def follow_torch_threads() -> None:
    """Numba's CPU kernels compute on torch's thread count (kernels/cpu.py says why)."""
    ops.cpu_kernels.follow_torch_threads()

BACKENDS = ("auto", "cuda", "cpu", "torch")
# On an H200 each Numba CUDA launch costs about 2 ms of host-side dispatch whatever the size, 3× the eager
# composite's time for the losses at 256–1024 rows (BENCHMARKS.md): `auto` takes the composite there, and
# `--kernels cuda` selects the Numba kernels.
AUTO_ON_CUDA = "torch"


def _resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """auto → the eager composite for CUDA tensors, else the Numba CPU kernels (each the faster one measured:
    `python -m train.commands.bench kernels`, BENCHMARKS.md); cuda also takes CPU tensors under Numba's simulator."""
    resolved = backend_for_device(backend, tensor.device)  # auto → the device's; an unknown name is refused there
    if resolved == "cpu" and tensor.is_cuda:
        raise ValueError("kernel backend 'cpu' needs CPU tensors; got a CUDA tensor (use 'cuda' or 'auto')")
    if resolved == "cuda" and not tensor.is_cuda and not ops.simulator_enabled():
        raise ValueError("kernel backend 'cuda' needs CUDA tensors (or NUMBA_ENABLE_CUDASIM=1); got a CPU tensor")
    return resolved


def backend_for_device(backend: str, device: torch.device) -> str:
    """The backend a run uses on `device`, decided once: auto → the eager composite on CUDA devices, else the
    Numba CPU kernels."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return AUTO_ON_CUDA if device.type == "cuda" else "cpu"
    return backend


class CompositeKernels:
    """The eager torch composite (kernels/reference.py) behind the calls ops.FusedKernels takes."""
    backend = "torch"

    @staticmethod
    def check_labels(joint_logits, labels, num_transforms) -> None:
        if not labels.is_cuda and not torch.compiler.is_compiling():  # CUDA labels are not synced for a check
            ops.check_label_range(labels, joint_logits.shape[1] // num_transforms)

    def joint_cross_entropy(self, joint_logits, labels, num_transforms, sum_over_transforms=False):
        self.check_labels(joint_logits, labels, num_transforms)
        return reference.joint_cross_entropy(joint_logits, labels, num_transforms, "mean", sum_over_transforms)

    def aggregate_logits(self, joint_logits, num_transforms):
        return reference.aggregate_logits(joint_logits, num_transforms)

    def distillation_kl(self, student_logits, teacher_logits, temperature):
        return reference.distillation_kl(student_logits, teacher_logits, temperature)


_KERNELS = {"torch": CompositeKernels(), "cpu": ops.FusedKernels("cpu"), "cuda": ops.FusedKernels("cuda")}


def for_device(backend: str, device: torch.device):
    """The loss kernels a run calls on `device` (`backend_for_device` resolves `backend`), bound once so that a
    training step makes no dispatch of its own: `.joint_cross_entropy`, `.aggregate_logits`, `.distillation_kl`
    and `.backend`, the resolved name. The shapes are the model's heads', so a step does not check them again."""
    return _KERNELS[backend_for_device(backend, device)]


def identity_rows(rows: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """[B·M, ...] → [B, ...]: the identity view's row b·M + 0 of every image."""
    return rows[::num_transforms]


def _check_precision(backend: str, tensor: torch.Tensor) -> None:
    if backend == "cuda" and tensor.dtype == torch.float64:
        raise ValueError("the cuda kernel backend computes in float32 and does not take float64 tensors; "
                         "use backend 'torch' for float64 (or pass float32)")


def check_joint_shapes(joint_logits: torch.Tensor, num_transforms: int, labels: torch.Tensor | None = None) -> None:
    if joint_logits.dim() != 2:
        raise ValueError(f"joint_logits must be 2-D [B·M, N·M]; got shape {tuple(joint_logits.shape)}")
    rows, columns = joint_logits.shape
    if num_transforms < 1 or rows % num_transforms or columns % num_transforms:
        raise ValueError(
            f"joint_logits shape {tuple(joint_logits.shape)} is not [B·M, N·M] for M={num_transforms}"
        )
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] * num_transforms != rows:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} does not match joint_logits {tuple(joint_logits.shape)} "
                f"with M={num_transforms}: expected [{rows // num_transforms}]"
            )


def joint_cross_entropy(joint_logits, labels, num_transforms, *, reduction="mean", sum_over_transforms=False,
                        backend="auto"):
    """L_SLA over [B·M, N·M] joint logits; mean over rows or per-row (reduction="none")."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    check_joint_shapes(joint_logits, num_transforms, labels)
    backend = _resolve_backend(backend, joint_logits)
    _check_precision(backend, joint_logits)
    if reduction == "mean":
        return _KERNELS[backend].joint_cross_entropy(joint_logits, labels, num_transforms, sum_over_transforms)
    if backend == "torch":
        CompositeKernels.check_labels(joint_logits, labels, num_transforms)
        return reference.joint_cross_entropy(joint_logits, labels, num_transforms, reduction, sum_over_transforms)
    per_row, _ = ops.call(ops.joint_ce_forward, joint_logits, labels, num_transforms, backend)
    if sum_over_transforms:
        per_row = per_row * num_transforms
    return per_row


def aggregate_logits(joint_logits, num_transforms, *, backend="auto"):
    """SLA+AG class scores [B, N]: the mean over views of each view's own-transform logits."""
    check_joint_shapes(joint_logits, num_transforms)
    backend = _resolve_backend(backend, joint_logits)
    _check_precision(backend, joint_logits)
    return _KERNELS[backend].aggregate_logits(joint_logits, num_transforms)


def single_view_logits(joint_logits, num_transforms):
    """SLA+SI class scores [B, N]: the identity view's identity-transform logits."""
    check_joint_shapes(joint_logits, num_transforms)
    return reference.single_view_logits(joint_logits, num_transforms)


def distillation_kl(student_logits, teacher_logits, *, temperature=1.0, backend="auto"):
    """τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), batch-mean, no gradient into the teacher."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must be 2-D and of the same shape"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    backend = _resolve_backend(backend, student_logits)
    _check_precision(backend, student_logits)
    return _KERNELS[backend].distillation_kl(student_logits, teacher_logits, temperature)


def check_family_fits(family: TransformFamily, height: int, width: int, channels: int) -> None:
    """Raise a clear error where a family is undefined for an image shape (docs/methods.md)."""
    if family.rotates and height != width:
        raise ValueError(
            f"transformation family {family.name!r} rotates by 90°, which needs square images; "
            f"got H={height}, W={width}"
        )
    if family.permutes_channels and channels != 3:
        raise ValueError(
            f"transformation family {family.name!r} permutes colour channels, which needs 3 channels; got {channels}"
        )


def expand_views(images, family, *, mean, std, out_dtype=torch.float32, channels_last=True, backend="auto"):
    """uint8 [B, H, W, C] → normalised views [B·M, C, H, W] in the interleaved layout."""
    family = get_family(family) if isinstance(family, str) else family
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [B, H, W, C]; got {images.dtype} of shape {tuple(images.shape)}")
    check_family_fits(family, images.shape[1], images.shape[2], images.shape[3])
    backend = _resolve_backend(backend, images)
    turns, orders, scale, shift = _family_tensors(family, tuple(mean), tuple(std), images.device)
    if backend == "torch":
        return reference.expand_views(images, family, scale, shift, orders, out_dtype, channels_last)
    views = ops.call(ops.expand_views, images, turns, orders, scale, shift, channels_last, backend)
    return views if out_dtype == torch.float32 else views.to(out_dtype)


def gather_expand_views(dataset, indices, offsets, flips, padding: int, family, *, mean, std, out_dtype=torch.float32,
                        channels_last=True, backend="auto"):
    """A training batch's views made straight from the resident uint8 dataset [N, H, W, C] in one pass: images
    `indices` [B], cropped at `offsets` [B, 2] (top, left in the image zero-padded by `padding`), mirrored where
    `flips` [B], then expanded as `expand_views` does. The torch backend composes the two steps (the reference)."""
    gather = bind_view_gather(dataset, padding, family, mean=mean, std=std, out_dtype=out_dtype,
                              channels_last=channels_last, backend=backend)
    return gather(indices, offsets, flips)


def bind_view_gather(dataset, padding: int, family, *, mean, std, out_dtype=torch.float32, channels_last=True,
                     backend="auto"):
    """`gather_expand_views` with the dataset, padding, family and layout checked and fixed once: the result maps
    a batch's (indices, offsets, flips) to its views, with nothing left to resolve per call."""
    family = get_family(family) if isinstance(family, str) else family
    if dataset.dtype != torch.uint8 or dataset.dim() != 4:
        raise ValueError(f"images must be uint8 [N, H, W, C]; got {dataset.dtype} of shape {tuple(dataset.shape)}")
    check_family_fits(family, dataset.shape[1], dataset.shape[2], dataset.shape[3])
    backend = _resolve_backend(backend, dataset)
    if backend == "torch":
        return functools.partial(_composite_gather, dataset, padding, family, mean, std, out_dtype, channels_last)
    tables = _family_tensors(family, tuple(mean), tuple(std), dataset.device)
    return ops.FusedViewGather(dataset, padding, tables, out_dtype, channels_last, backend)


def _composite_gather(dataset, padding, family, mean, std, out_dtype, channels_last, indices, offsets, flips):
    cropped = reference.crop_and_flip(dataset[indices], offsets, flips, padding)
    return expand_views(cropped, family, mean=mean, std=std, out_dtype=out_dtype, channels_last=channels_last,
                        backend="torch")


@functools.lru_cache(maxsize=64)
def _family_tensors(family: TransformFamily, mean: tuple, std: tuple, device: torch.device):
    """The small per-family tables the view kernel reads, made once per device."""
    turns = torch.tensor(family.quarter_turns, dtype=torch.int32, device=device)
    orders = torch.tensor(family.channel_orders, dtype=torch.int32, device=device)  # index_select takes int32
    scale, shift = reference.normalisation_affine(mean, std, device)
    return turns, orders, scale, shift


__all__ = [
    "bind_view_gather", "follow_torch_threads", "for_device", "gather_expand_views",
    "BACKENDS", "FAMILIES", "TransformFamily", "aggregate_logits", "backend_for_device",
    "check_family_fits", "distillation_kl", "expand_views", "get_family", "identity_rows", "joint_cross_entropy",
    "raise_pending_label_error", "single_view_logits", "upcast",
]
