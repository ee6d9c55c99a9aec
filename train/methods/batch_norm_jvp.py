"""BatchNorm on batch statistics with a short forward-mode rule, for MAXL's Jacobian-vector product.

PyTorch's forward-mode rule for batch norm is a composite of about fifteen elementwise passes; in the
meta step's JVP (python -m train.commands.bench step --method maxl) it took more time than the convolutions. Written here
because no library ships a cheaper one. With x̂ = (x − μ)/σ over every dimension but the channel:

    ẏ = γ̇ x̂ + β̇ + (γ/σ) (ẋ − mean(ẋ) − x̂ mean(ẋ x̂))

two reductions and two fused multiply-adds. Only forward mode is defined: the pass runs under no_grad.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


def _widened(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 as fp32; fp32 and fp64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class BatchStatsNorm(torch.autograd.Function):
    """y = γ (x − μ)/σ + β with the batch's μ and σ (training-mode BatchNorm; no running statistics)."""

    @staticmethod
    def forward(x, weight, bias, eps):
        out, mean, rstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        shape = _channel_shape(x)
        return out, (_widened(x) - mean.view(shape)) * rstd.view(shape), rstd.view(shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, _, _ = inputs
        out, normalized, rstd = output
        ctx.dtype = out.dtype
        ctx.mark_non_differentiable(normalized, rstd)
        ctx.save_for_forward(normalized, rstd, weight)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, _eps_t):
        normalized, rstd, weight = ctx.saved_tensors
        shape = _channel_shape(normalized)
        scale = weight.view(shape) * rstd
        coefficient = torch.zeros_like(scale) if weight_t is None else weight_t.view(shape).clone()
        offset = torch.zeros_like(scale) if bias_t is None else bias_t.view(shape).clone()
        if x_t is None:
            return torch.addcmul(offset, normalized, coefficient).to(ctx.dtype), None, None
        dims = [d for d in range(normalized.dim()) if d != 1]
        x_t = _widened(x_t)  # the tangent comes in the primal's dtype (bf16 under autocast): reduce in fp32
        coefficient -= scale * (x_t * normalized).mean(dim=dims, keepdim=True)
        offset -= scale * x_t.mean(dim=dims, keepdim=True)
        return torch.addcmul(offset, normalized, coefficient).addcmul_(x_t, scale).to(ctx.dtype), None, None

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("BatchStatsNorm is for forward mode only")


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class _RouteBatchNorm(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = {**dict(zip(_BATCH_NORM_ARGS, args)), **kwargs}
            if bound.get("training") and bound.get("weight") is not None and bound.get("bias") is not None:
                return BatchStatsNorm.apply(bound["input"], bound["weight"], bound["bias"], bound.get("eps", 1e-5))[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def batch_norm_forward_mode():
    """Inside: training-mode affine BatchNorm layers run as BatchStatsNorm (their running statistics are
    not updated), everything else as usual."""
    with _RouteBatchNorm():
        yield
