"""The composite reference of every kernel, in plain torch ops (the `torch` backend).

Each function is the equation of docs/methods.md written directly; the fused Numba kernels
are tested against these (and these against float64 math in the tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .families import TransformFamily


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """Arithmetic in float32, or float64 where the input already is."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def joint_targets(labels: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """Joint label of row b·M+j is labels[b]·M + j (class-major, docs/methods.md)."""
    transform_ids = torch.arange(num_transforms, device=labels.device)
    return (labels[:, None] * num_transforms + transform_ids[None, :]).reshape(-1)


def joint_cross_entropy(joint_logits, labels, num_transforms, reduction="mean", sum_over_transforms=False):
    """L_SLA: mean over the B·M rows of −log softmax(L[r])[y[b]·M + j]."""
    per_row = F.cross_entropy(upcast(joint_logits), joint_targets(labels, num_transforms), reduction="none")
    if sum_over_transforms:
        per_row = per_row * num_transforms
    return per_row.mean() if reduction == "mean" else per_row


def aggregate_logits(joint_logits: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """SLA+AG: s[b, i] = (1/M) Σ_j L[b·M + j, i·M + j]."""
    rows, columns = joint_logits.shape
    grid = upcast(joint_logits).reshape(rows // num_transforms, num_transforms, columns // num_transforms, num_transforms)
    return torch.diagonal(grid, dim1=1, dim2=3).mean(dim=-1)


def single_view_logits(joint_logits: torch.Tensor, num_transforms: int) -> torch.Tensor:
    """SLA+SI: L[b·M + 0, i·M + 0]."""
    return joint_logits[::num_transforms, ::num_transforms]


def distillation_kl(student_logits, teacher_logits, temperature=1.0):
    """τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), averaged over rows, no gradient into the teacher."""
    student_log_probs = F.log_softmax(upcast(student_logits) / temperature, dim=1)
    teacher_log_probs = F.log_softmax(upcast(teacher_logits.detach()).to(upcast(student_logits).dtype) / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


def normalisation_affine(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 pixel p of channel c becomes p·scale[c] + shift[c] = (p/255 − mean[c]) / std[c]."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32)
    shift = (-mean / std).to(torch.float32)
    return scale.to(device), shift.to(device)


def expand_views(images, family: TransformFamily, scale, shift, channel_orders, out_dtype=torch.float32,
                 channels_last=True):
    """uint8 [B, H, W, C] → normalised views [B·M, C, H, W], row b·M+j = t_j(x_b).

    Pixels are normalised with their source channel's statistics (`normalisation_affine`), then permuted, as
    the paper's code permutes already-normalised tensors. `channel_orders` is the family's [M, C] table on the
    images' device (indexing with it makes no host tensor).
    """
    batch, height, width, channels = images.shape
    normalised = (images.float() * scale + shift).permute(0, 3, 1, 2)  # [B, C, H, W]
    views = [
        torch.rot90(normalised, turns, dims=(-2, -1)).index_select(1, channel_orders[j])
        for j, turns in enumerate(family.quarter_turns)
    ]
    stacked = torch.stack(views, dim=1).reshape(batch * family.num_transforms, channels, height, width)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return stacked.to(dtype=out_dtype, memory_format=memory_format)


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad uint8 [B, H, W, C] images by `padding`, crop back to H×W at `offsets` (top, left in the padded
    image), mirror the rows where `flips`: the resident loader's augmentation, and the fused gather's reference."""
    batch, height, width, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    offsets, flips = offsets.to(images.device), flips.to(images.device)
    rows = offsets[:, :1] + torch.arange(height, device=images.device)  # [B, H]
    column_steps = torch.arange(width, device=images.device)
    column_steps = torch.where(flips[:, None], width - 1 - column_steps, column_steps)
    columns = offsets[:, 1:] + column_steps  # [B, W]
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    return padded[batch_index, rows[:, :, None], columns[:, None, :]]
