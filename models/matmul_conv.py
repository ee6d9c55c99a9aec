"""Convolutions computed as matrix products where oneDNN's bf16 kernels are slow, for bf16 training on a CPU.

oneDNN's bf16 convolutions lose much of their speed on small feature maps: with AMX, for 512 channels at
4×4 the forward and the input gradient ran at about a third of the rate of the same arithmetic at 64
channels on 32×32, and the weight gradient at a fifth; with AVX512-BF16 alone (AMD Zen 5) the loss is
smaller and starts at smaller maps (`python train/bench.py conv` times each pass per layer shape; the rules
below are per CPU kind, from that command on each).
The same arithmetic as matrix products, which the matmul units run at full speed:
- weight gradient (outputs of at most `max_area` positions): a sum over kernel positions of
  (grad_out)ᵀ · (shifted input), each an [O × N·H'·W'] by [N·H'·W' × C] product;
- forward (at most `forward_max_area` positions and wide layers): the unfolded input [N·H'·W' × k_h·k_w·C]
  by the weight [k_h·k_w·C × O], one product;
- input gradient of those layers at stride 1: the same product on grad_out with the flipped, transposed
  kernel (other strides keep PyTorch's).
Written here because no library offers this choice of algorithm per layer. Outside bf16 autocast on a
CPU, or for layers outside these rules, the layer is nn.Conv2d.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

@dataclass(frozen=True)
class MatmulRules:
    """Which passes of a layer run as matmuls: the weight gradient for outputs of at most `max_area` positions
    (H'·W') and at least `min_channel_pairs` in·out channels; the forward and the stride-1 input gradient
    when, besides, the outputs are at most `forward_max_area` positions and the layer has at least
    `forward_min_channel_pairs`. `name`: the CPU kind they were measured on."""
    name: str
    max_area: int
    min_channel_pairs: int
    forward_max_area: int
    forward_min_channel_pairs: int


# From `bench.py conv` (2 cores, batch 128, channels_last), each pass timed alone; BENCHMARKS.md has both tables.
# AMX (Intel Sapphire Rapids class): the weight gradient as matmuls from 128→128 on 8×8 maps (1.1x faster on
# 7×7, 1.6x at 256→256 on 8×8, about 5x at 512→512 on 4×4; slower at 16×16 and above or with 64 channels,
# where oneDNN's kernel is good); the forward and input gradient from 256→256 on 4×4 (1.1x, 1.4-1.9x at
# 512→512 on 4×4 and 256→512 to 4×4, 1.8-2x at 512→512 on 2×2; at 8×8 oneDNN is faster).
AMX_RULES = MatmulRules("amx", max_area=64, min_channel_pairs=128 * 128, forward_max_area=16,
                        forward_min_channel_pairs=256 * 256)
# AVX512-BF16 without AMX (AMD Zen 5): oneDNN stays ahead down to 8×8 maps and on 256→256 at 4×4 in the
# forward (2.7 against 4.1 ms) and input gradient; matmuls win the weight gradient from 256→256 on 4×4 (1.3x;
# 1.5x at 512→512 on 4×4, 2.4x at 256→512 to 4×4, 3.2x at 512→512 on 2×2) and the forward and input
# gradient from 256→512 to 4×4 (1.2x; 1.0-1.1x at 512→512 on 4×4, 1.3-1.6x on 2×2).
AVX512_BF16_RULES = MatmulRules("avx512_bf16", max_area=16, min_channel_pairs=256 * 256, forward_max_area=16,
                                forward_min_channel_pairs=256 * 512)


def cpu_matmul_rules() -> MatmulRules:
    """The rules measured on this CPU's kind: AMX or not (torch.cpu's own CPUID probe)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return AMX_RULES if amx else AVX512_BF16_RULES


def output_size(size: tuple[int, int], kernel, stride, padding) -> tuple[int, int]:
    return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, kernel, stride, padding))


def shifted_windows(x: torch.Tensor, kernel, stride, padding):
    """The k_h·k_w views of x (as N, H, W, C, zero-padded) that kernel position (i, j) multiplies."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    out_h, out_w = output_size(x.shape[2:], kernel, stride, padding)
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # N, H + 2p, W + 2p, C
    for i in range(kh):
        for j in range(kw):
            yield i, j, padded[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]


def weight_gradient(grad_out: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW[o, c, i, j] = Σ_{n, y, x} grad_out[n, o, y, x] · x_padded[n, c, y·s_h + i, x·s_w + j]."""
    c = x.shape[1]
    out_channels = grad_out.shape[1]
    rows = grad_out.numel() // out_channels
    grad_rows = grad_out.permute(0, 2, 3, 1).reshape(rows, out_channels).t()  # O × N·H'·W'
    grad = torch.empty(*kernel, out_channels, c, dtype=x.dtype, device=x.device)
    for i, j, shifted in shifted_windows(x, kernel, stride, padding):
        torch.mm(grad_rows, shifted.reshape(rows, c), out=grad[i, j])
    return grad.permute(2, 3, 0, 1)  # O, C, kh, kw


def matmul_convolution(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                       padding: tuple[int, int]) -> torch.Tensor:
    """conv2d(x, weight) as one product: the unfolded input [N·H'·W' × k_h·k_w·C] by the weight
    [k_h·k_w·C × O]. The result is channels_last."""
    n, c = x.shape[:2]
    kh, kw = weight.shape[2:]
    out_h, out_w = output_size(x.shape[2:], (kh, kw), stride, padding)
    unfolded = torch.empty(n, out_h, out_w, kh * kw, c, dtype=x.dtype, device=x.device)
    for i, j, shifted in shifted_windows(x, (kh, kw), stride, padding):
        unfolded[:, :, :, i * kw + j] = shifted
    out = unfolded.view(n * out_h * out_w, kh * kw * c) @ weight.permute(2, 3, 1, 0).reshape(kh * kw * c, -1)
    return out.view(n, out_h, out_w, -1).permute(0, 3, 1, 2)


def flipped_input_gradient_applies(kernel, stride, padding) -> bool:
    """dL/dx of a stride-1 convolution is grad_out convolved with the flipped, transposed kernel at padding
    k − 1 − p, which must not be negative."""
    return tuple(stride) == (1, 1) and all(p <= k - 1 for p, k in zip(padding, kernel))


class _MatmulConv(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x, weight, stride, padding, forward_as_matmul: bool):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.forward_as_matmul = stride, padding, forward_as_matmul
        if forward_as_matmul:
            return matmul_convolution(x, weight, stride, padding)
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        kernel = tuple(weight.shape[2:])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            if ctx.forward_as_matmul and flipped_input_gradient_applies(kernel, ctx.stride, ctx.padding):
                grad_x = matmul_convolution(grad_out, weight.flip(2, 3).transpose(0, 1), (1, 1),
                                            tuple(k - 1 - p for k, p in zip(kernel, ctx.padding)))
            else:
                grad_x = torch.ops.aten.convolution_backward(
                    grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1,
                    [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad_out, x, kernel, ctx.stride, ctx.padding)
        return grad_x, grad_weight, None, None, None


class MatmulConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) whose passes are matmuls where that is faster."""
    rules = cpu_matmul_rules()  # this CPU's kind's; a layer (or a test) may set its own

    def matmul_passes(self, area: int) -> tuple[bool, bool]:
        """(weight gradient, forward and stride-1 input gradient) as matmuls, for outputs of `area` positions."""
        pairs, rules = self.in_channels * self.out_channels, self.rules
        weight = area <= rules.max_area and pairs >= rules.min_channel_pairs
        return weight, weight and area <= rules.forward_max_area and pairs >= rules.forward_min_channel_pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return super().forward(x)
        out_h, out_w = output_size(x.shape[2:], self.kernel_size, self.stride, self.padding)
        weight_as_matmul, forward_as_matmul = self.matmul_passes(out_h * out_w)
        if torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad):
            if not weight_as_matmul:
                return super().forward(x)
            out = _MatmulConv.apply(x, self.weight, self.stride, self.padding, forward_as_matmul)
        elif forward_as_matmul:  # no gradient (a momentum network, evaluation): the forward product alone
            out = matmul_convolution(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), self.stride, self.padding)
        else:
            return super().forward(x)
        return out if self.bias is None else out + self.bias.to(out.dtype).view(1, -1, 1, 1)


def use_matmul_convolutions(network: nn.Module) -> nn.Module:
    """Every plain Conv2d (groups 1, dilation 1, zero padding) becomes a MatmulConv2d in place."""
    for module in network.modules():
        if (type(module) is nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
                and module.padding_mode == "zeros" and not isinstance(module.padding, str)):
            module.__class__ = MatmulConv2d
    return network
