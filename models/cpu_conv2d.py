"""MatmulConv2d: nn.Conv2d (same parameters and state dict) whose passes, under bf16 autocast on a CPU, each take
the faster of oneDNN's kernel and the matrix products of models/matmul_conv.py, as models/conv_ways.py chose
for this layer and batch shape on this machine. Elsewhere (fp32, a GPU) it is nn.Conv2d."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import conv_ways
from models.conv_ways import ConvWays
from models.matmul_conv import flipped_input_gradient_applies, matmul_convolution, weight_gradient


class _MatmulConv(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x, weight, stride, padding, forward_as_matmul: bool, input_gradient_as_matmul: bool,
                weight_gradient_as_matmul: bool):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        ctx.input_gradient_as_matmul = input_gradient_as_matmul and flipped_input_gradient_applies(
            tuple(weight.shape[2:]), stride, padding)
        ctx.weight_gradient_as_matmul = weight_gradient_as_matmul
        if forward_as_matmul:
            return matmul_convolution(x, weight, stride, padding)
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        kernel = tuple(weight.shape[2:])
        wanted_x, wanted_weight = ctx.needs_input_grad[:2]
        matmul_x = wanted_x and ctx.input_gradient_as_matmul
        matmul_weight = wanted_weight and ctx.weight_gradient_as_matmul
        grad_x = grad_weight = None
        if (wanted_x and not matmul_x) or (wanted_weight and not matmul_weight):  # oneDNN's, in one call
            grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1,
                [wanted_x and not matmul_x, wanted_weight and not matmul_weight, False])
        if matmul_x:
            grad_x = matmul_convolution(grad_out, weight.flip(2, 3).transpose(0, 1), (1, 1),
                                        tuple(k - 1 - p for k, p in zip(kernel, ctx.padding)))
        if matmul_weight:
            grad_weight = weight_gradient(grad_out, x, kernel, ctx.stride, ctx.padding)
        return grad_x, grad_weight, None, None, None, None, None


class MatmulConv2d(nn.Conv2d):
    """nn.Conv2d whose bf16 CPU passes run the way models/conv_ways.py chose; `forced_ways` (a layer's or the
    class's) overrides the choice, for tests."""
    forced_ways: ConvWays | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return super().forward(x)
        ways = self.forced_ways or conv_ways.ways_for(x, self.weight, self.stride, self.padding)
        if torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad):
            if ways == conv_ways.ONEDNN:
                return super().forward(x)
            out = _MatmulConv.apply(x, self.weight, self.stride, self.padding, ways.forward, ways.input_gradient,
                                    ways.weight_gradient)
        elif ways.forward:  # no gradient (a momentum network, evaluation): the forward product alone
            out = matmul_convolution(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), self.stride, self.padding)
        else:
            return super().forward(x)
        return out if self.bias is None else out + self.bias.to(out.dtype).view(1, -1, 1, 1)


def use_matmul_convolutions(network: nn.Module) -> nn.Module:
    """Every plain Conv2d (groups 1, dilation 1, zero padding) becomes a MatmulConv2d in place; the ways stored
    for this machine are read now, so a network that torch.compile traces takes them too."""
    conv_ways.load_machine_choices()
    for module in network.modules():
        if (type(module) is nn.Conv2d and module.groups == 1 and module.dilation == (1, 1)
                and module.padding_mode == "zeros" and not isinstance(module.padding, str)):
            module.__class__ = MatmulConv2d
    return network
