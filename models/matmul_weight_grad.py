"""Convolutions whose weight gradient is k_h·k_w matrix products, for bf16 training on a CPU.

On a CPU with AMX, oneDNN's bf16 weight-gradient convolution was the slowest part of a ResNet-18 step
at small feature maps: for 512 channels at 4×4 it ran several times longer than the forward
(`python train/bench.py conv` prints both ways per layer shape). The same gradient is a sum over kernel
positions of (grad_out)ᵀ · (shifted input), each an [O × N·H'·W'] by [N·H'·W' × C] product that the
matmul units run at full speed. Written here because no library offers this choice of algorithm.

Only the weight gradient changes: the forward and the input gradient are PyTorch's convolution, and the
layer falls back to nn.Conv2d outside bf16 autocast on a CPU or above `max_area` output positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Layers with at most MAX_AREA output positions (H'·W') and at least MIN_CHANNEL_PAIRS in·out channels
# take the matmul weight gradient; from `bench.py conv` on an AMX CPU: 1.4–2.2x faster for 128→256 and
# wider at 8×8 and 4×4 outputs, a wash at 128→128, slower at 16×16 and above or with 64 channels
# (where oneDNN's own kernel is efficient).
MAX_AREA = 64
MIN_CHANNEL_PAIRS = 128 * 256


def weight_gradient(grad_out: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW[o, c, i, j] = Σ_{n, y, x} grad_out[n, o, y, x] · x_padded[n, c, y·s_h + i, x·s_w + j]."""
    n, c = x.shape[:2]
    out_channels, out_h, out_w = grad_out.shape[1:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # N, H + 2p, W + 2p, C
    rows = n * out_h * out_w
    grad_rows = grad_out.permute(0, 2, 3, 1).reshape(rows, out_channels).t()  # O × N·H'·W'
    grad = torch.empty(kh, kw, out_channels, c, dtype=x.dtype, device=x.device)
    for i in range(kh):
        for j in range(kw):
            shifted = padded[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
            torch.mm(grad_rows, shifted.reshape(rows, c), out=grad[i, j])
    return grad.permute(2, 3, 0, 1)  # O, C, kh, kw


class _MatmulWeightGradConv(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad_out, x, tuple(weight.shape[2:]), ctx.stride, ctx.padding)
        return grad_x, grad_weight, None, None


class MatmulWeightGradConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) with the matmul weight gradient where it is faster."""
    max_area, min_channel_pairs = MAX_AREA, MIN_CHANNEL_PAIRS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16 and self.weight.requires_grad):
            return super().forward(x)
        out_h = (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        out_w = (x.shape[3] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        if out_h * out_w > self.max_area or self.in_channels * self.out_channels < self.min_channel_pairs:
            return super().forward(x)
        out = _MatmulWeightGradConv.apply(x, self.weight, self.stride, self.padding)
        return out if self.bias is None else out + self.bias.to(out.dtype).view(1, -1, 1, 1)


def use_matmul_weight_gradients(network: nn.Module) -> nn.Module:
    """Every plain Conv2d (groups 1, dilation 1, zero padding) becomes a MatmulWeightGradConv2d in place."""
    for module in network.modules():
        if (type(module) is nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
                and module.padding_mode == "zeros" and not isinstance(module.padding, str)):
            module.__class__ = MatmulWeightGradConv2d
    return network
