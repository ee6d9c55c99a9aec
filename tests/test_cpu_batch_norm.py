"""The Numba BatchNorm2d path (models/cpu_batch_norm.py, kernels/batch_norm.py) against float64 nn.BatchNorm2d
on the same bf16 inputs: awkward shapes (odd batch, channels, sizes), a mean far from zero (cancellation), values
and gradients within bf16 rounding, running statistics to float precision; the fused ReLU and residual; a
residual block on it; and every case it leaves to PyTorch."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.autograd import forward_ad

from models.blocks import BasicBlock
from models.cpu_batch_norm import CpuBatchNorm2d, batch_norm_relu, use_cpu_batch_norm

# bf16 keeps 8 significant bits: a rounded value is within 2^-8 of itself, so within 2^-8 of the largest
BF16 = 2.0 ** -8


def channels_last_bf16(*shape, scale=1.0, loc=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(*shape, generator=generator) * scale + loc
    return values.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def layers(channels: int, momentum=0.1):
    torch.manual_seed(channels)
    reference = nn.BatchNorm2d(channels, momentum=momentum)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    layer = use_cpu_batch_norm(copy.deepcopy(reference).float())
    layer.min_elements = 1  # the Numba path at these small sizes
    return reference.double(), layer


def relative_error(result: torch.Tensor, expected: torch.Tensor) -> float:
    return ((result.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("shape,loc,momentum", [((3, 5, 7, 9), 0.0, 0.1), ((2, 3, 5, 5), 300.0, 0.1),
                                                ((1, 7, 3, 1), -2.0, None), ((9, 33, 6, 4), 0.5, 0.3)])
def test_values_gradients_and_running_statistics_match_float64(shape, loc, momentum):
    reference, layer = layers(shape[1], momentum)
    assert type(layer) is CpuBatchNorm2d and layer.state_dict().keys() == reference.state_dict().keys()
    for step in range(2):  # two steps: the running statistics' update rule, momentum None included
        x = channels_last_bf16(*shape, scale=3.0, loc=loc, seed=step)
        grad = channels_last_bf16(*shape, seed=10 + step)
        x64 = x.double().requires_grad_()
        x16 = x.clone().requires_grad_()
        expected, result = reference(x64), layer(x16)
        expected.backward(grad.double())
        result.backward(grad)
        assert result.dtype == torch.bfloat16 and result.is_contiguous(memory_format=torch.channels_last)
        assert relative_error(result, expected) <= BF16
        assert relative_error(x16.grad, x64.grad) <= 2 * BF16  # one rounding of dL/dx, float32 arithmetic
        for mine, theirs in ((layer.weight.grad, reference.weight.grad), (layer.bias.grad, reference.bias.grad)):
            assert relative_error(mine, theirs) < 1e-5
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(layer, name).double(), getattr(reference, name), rtol=1e-5, atol=1e-6)
        assert layer.num_batches_tracked.item() == reference.num_batches_tracked.item() == step + 1
        layer.zero_grad(), reference.zero_grad()


def test_without_gradient_a_momentum_network_gets_the_same_values():
    reference, layer = layers(6)
    x = channels_last_bf16(4, 6, 5, 3, loc=1.0)
    with torch.no_grad():
        assert relative_error(layer(x), reference(x.double())) <= BF16


@pytest.mark.parametrize("case", ["eval", "fp32", "contiguous", "forward_ad", "small"])
def test_other_cases_are_pytorch_own(case, monkeypatch):
    """The Numba path must not run (it would raise here); results equal nn.BatchNorm2d's."""
    reference, layer = layers(4)
    reference = reference.float()
    x = channels_last_bf16(3, 4, 5, 5)
    if case == "eval":
        layer.eval(), reference.eval()
    if case == "fp32":
        x = x.float()
    if case == "contiguous":
        x = x.contiguous()
    if case == "small":  # the default rule: too few values for the Numba path to pay
        layer.min_elements = CpuBatchNorm2d.min_elements
    monkeypatch.setattr("models.cpu_batch_norm._Bf16BatchNorm.apply", None)  # calling it would fail
    if case == "forward_ad":  # MAXL's JVP: F.batch_norm must see the dual tensor
        with torch.no_grad(), forward_ad.dual_level():
            dual = forward_ad.make_dual(x, torch.ones_like(x))  # bf16 channels_last: the Numba path's input
            tangent = forward_ad.unpack_dual(layer(dual)).tangent
            assert tangent is not None
        return
    torch.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize("shape,with_residual", [((3, 5, 7, 9), False), ((3, 5, 7, 9), True), ((2, 9, 6, 5), True)])
def test_fused_relu_and_residual_match_float64(shape, with_residual):
    """ReLU(BN(x) [+ r]) in one pass. ReLU's mask may differ from float64's only where the pre-activation is
    within bf16 rounding of 0; the gradients are checked against float64 with the kernel's own mask."""
    reference, layer = layers(shape[1])
    x, grad = channels_last_bf16(*shape, scale=2.0, seed=1), channels_last_bf16(*shape, seed=2)
    residual = channels_last_bf16(*shape, seed=3) if with_residual else None
    inputs = [x.clone().requires_grad_()] + ([residual.clone().requires_grad_()] if with_residual else [])
    result = batch_norm_relu(layer, *inputs)
    result.backward(grad)
    assert result.dtype == torch.bfloat16 and result.is_contiguous(memory_format=torch.channels_last)

    x64 = x.double().requires_grad_()
    pre = reference(x64) + (residual.double() if with_residual else 0)
    assert relative_error(result, pre.clamp(min=0)) <= BF16
    mask = result > 0
    disagree = mask != (pre > 0)
    assert (pre.detach().abs()[disagree] <= BF16 * pre.detach().abs().max()).all()
    grad64 = grad.double() * mask  # what passes the kernel's ReLU
    pre.backward(grad64)
    assert relative_error(inputs[0].grad, x64.grad) <= 2 * BF16
    if with_residual:  # dL/dr is the masked gradient itself, exactly
        assert torch.equal(inputs[1].grad, (grad * mask).to(torch.bfloat16))
    for mine, theirs in ((layer.weight.grad, reference.weight.grad), (layer.bias.grad, reference.bias.grad)):
        assert relative_error(mine, theirs) < 1e-5


def test_a_residual_block_on_the_fused_batch_norm_trains_like_float64():
    """BasicBlock with a projection shortcut under bf16 autocast, its BNs the fused Numba ones, against the
    same block in float64: output, the input's gradient and every parameter's (the shortcut's through the
    fused residual) within 2% of each tensor's largest value; PyTorch's own bf16 BN is within 1% here."""
    torch.manual_seed(0)
    stock = BasicBlock(6, 8, stride=2).to(memory_format=torch.channels_last)
    fused = use_cpu_batch_norm(copy.deepcopy(stock))
    for module in fused.modules():
        if isinstance(module, CpuBatchNorm2d):
            module.min_elements = 1
    inputs = channels_last_bf16(4, 6, 9, 9, seed=5).float()
    results = []
    for block, precision in ((fused, torch.bfloat16), (copy.deepcopy(stock).double(), torch.float64)):
        x = inputs.to(torch.float64 if precision == torch.float64 else torch.float32, copy=True).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
            out = block(x)
        out.double().square().sum().backward()
        results.append([out, x.grad] + [p.grad for p in block.parameters()])
    assert all(grad is not None for grad in results[0])
    for mine, expected in zip(*results):
        assert relative_error(mine, expected) < 0.02
