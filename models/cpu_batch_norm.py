"""BatchNorm2d whose training-mode passes on large bf16 channels_last CPU activations are kernels/batch_norm.py's
Numba kernels (why: that module's docstring).

Same parameters, buffers and state dict as nn.BatchNorm2d, and the same running-statistics rule. The residual
blocks call `batch_norm_relu`, which fuses what follows BN there (ReLU, or + shortcut and ReLU) into the
same passes: one rounding to bf16 instead of three, no separate ReLU or add pass, no ReLU backward pass,
and ReLU's mask read from its output as PyTorch's ReLU backward does. Every other
case is nn.BatchNorm2d's own: activations of fewer than MIN_ELEMENTS values, evaluation mode, fp32 or fp16
input, other layouts, GPUs, and forward-mode AD (MAXL's meta step intercepts F.batch_norm, which this path
does not call).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.autograd import forward_ad

from kernels import batch_norm as kernel

# From `bench.py batchnorm` on the AMX CPU (2 cores): BN alone on the Numba kernels was 1.1-1.3x faster than
# PyTorch's for activations of 4M values and more (64 channels at 32×32 and 128 at 16×16 at batch 128, 16 at
# 64×64), even around 4M at 16 and 32 channels, and no faster below 4M; the fusion comes on top.
MIN_ELEMENTS = 1 << 22


def _rows_bits(x: torch.Tensor) -> np.ndarray:
    """A channels_last [N, C, H, W] bf16 tensor's memory as int16 rows [N·H·W, C] (no copy)."""
    return x.detach().permute(0, 2, 3, 1).reshape(-1, x.shape[1]).view(torch.int16).numpy()


def _empty_like_rows(x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    out = torch.empty_like(x, memory_format=torch.channels_last)
    return out, _rows_bits(out)


def _optional_rows(x: torch.Tensor | None, channels: int) -> np.ndarray:
    """The rows of x, or zero rows: the kernels' way of saying "absent"."""
    return _rows_bits(x) if x is not None else np.empty((0, channels), np.int16)


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's per-channel mean and biased variance, float64."""
    rows_bits = _rows_bits(x)
    shift = kernel.first_row(rows_bits)  # sums of x − x[0]: no cancellation when |mean| ≫ std
    first, second = kernel.paired_sums(rows_bits, shift, rows_bits, shift, _optional_rows(None, x.shape[1]))
    rows = x.numel() // x.shape[1]
    offset = first / rows
    return (torch.from_numpy(shift.astype(np.float64) + offset),
            torch.from_numpy(np.maximum(second / rows - offset * offset, 0.0)))


class _Bf16BatchNorm(torch.autograd.Function):
    """BN on the batch's statistics, then optionally + residual and ReLU, fused (kernels/batch_norm.py)."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, mean, variance, eps, relu: bool):
        invstd = (variance + eps).rsqrt()
        scale = weight.detach().double() * invstd
        offset = bias.detach().double() - mean * scale
        out, out_rows = _empty_like_rows(x)
        kernel.scale_shift(_rows_bits(x), scale.float().numpy(), offset.float().numpy(),
                           _optional_rows(residual, x.shape[1]), relu, out_rows)
        ctx.has_residual = residual is not None
        ctx.save_for_backward(x, weight, mean, invstd, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd, activated = ctx.saved_tensors
        channels = x.shape[1]
        grad_out = grad_out.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        mask = _optional_rows(activated, channels)
        mean32 = mean.float().numpy()
        grad_sum, grad_centred_sum = (torch.from_numpy(s) for s in kernel.paired_sums(
            _rows_bits(grad_out), np.zeros_like(mean32), _rows_bits(x), mean32, mask))
        grad_x = grad_residual = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            rows = x.numel() // channels
            grad_x, grad_rows = _empty_like_rows(x)
            grad_residual = torch.empty_like(grad_x) if ctx.has_residual and ctx.needs_input_grad[1] else None
            kernel.input_gradient(_rows_bits(grad_out), _rows_bits(x), mean32,
                                  (weight.detach().double() * invstd).float().numpy(),
                                  (grad_sum / rows).float().numpy(),
                                  (grad_centred_sum * invstd * invstd / rows).float().numpy(), mask, grad_rows,
                                  _optional_rows(grad_residual, channels))
            grad_x = grad_x if ctx.needs_input_grad[0] else None
        grad_weight = (grad_centred_sum * invstd).to(weight.dtype) if ctx.needs_input_grad[2] else None
        grad_bias = grad_sum.to(weight.dtype) if ctx.needs_input_grad[3] else None
        return grad_x, grad_residual, grad_weight, grad_bias, None, None, None, None


class CpuBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with the Numba training path for large bf16 channels_last inputs on a CPU."""
    min_elements = MIN_ELEMENTS

    def takes(self, x: torch.Tensor) -> bool:
        """Whether the Numba path computes this input."""
        return (self.training and self.affine and x.device.type == "cpu" and x.dtype == torch.bfloat16
                and x.dim() == 4 and x.numel() >= self.min_elements and x.shape[0] * x.shape[2] * x.shape[3] > 1
                and x.is_contiguous(memory_format=torch.channels_last) and forward_ad._current_level < 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.takes(x):
            return super().forward(x)
        return self.numba_forward(x, None, relu=False)

    def fuses(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        """Whether ReLU(BN(x) [+ residual]) can be one Numba pass: the path takes x and the residual is laid
        out like x."""
        return self.takes(x) and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape
                                                       and residual.is_contiguous(memory_format=torch.channels_last)))

    def numba_forward(self, x: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
        mean, variance = batch_statistics(x)
        if self.track_running_stats:
            self.update_running_statistics(mean, variance, x.numel() // x.shape[1])
        return _Bf16BatchNorm.apply(x, residual, self.weight, self.bias, mean, variance, self.eps, relu)

    @torch.no_grad()
    def update_running_statistics(self, mean: torch.Tensor, variance: torch.Tensor, rows: int) -> None:
        """nn.BatchNorm2d's rule: an exponential average with `momentum`, or the cumulative mean when it is
        None; the running variance is the unbiased one."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        unbiased = variance * (rows / (rows - 1))
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def batch_norm_relu(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """ReLU(norm(x) [+ residual]) for the residual blocks: fused where `norm` is a CpuBatchNorm2d that takes x,
    otherwise the operations as written (the ReLU in place, as nn.ReLU(inplace=True))."""
    if isinstance(norm, CpuBatchNorm2d) and norm.fuses(x, residual):
        return norm.numba_forward(x, residual, relu=True)
    out = norm(x)
    return torch.relu_(out if residual is None else out + residual)


def use_cpu_batch_norm(network: nn.Module) -> nn.Module:
    """Every nn.BatchNorm2d becomes a CpuBatchNorm2d in place (same parameters and state dict)."""
    for module in network.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = CpuBatchNorm2d
    return network
