"""The matmul convolution passes against PyTorch's convolution: float64 on awkward shapes (odd batch, channels,
sizes; strides 1 and 2; 1×1, 3×3 and 5×5 kernels) for the forward, the weight gradient and the flipped-kernel
input gradient, and the swapped layer under bf16 autocast."""
import copy

import pytest
import torch
import torch.nn as nn

from models.matmul_conv import (AMX_RULES, AVX512_BF16_RULES, MatmulConv2d, MatmulRules, cpu_matmul_rules,
                                flipped_input_gradient_applies, matmul_convolution, use_matmul_convolutions,
                                weight_gradient)


EVERY_PASS_AS_MATMUL = MatmulRules("every pass", max_area=10**6, min_channel_pairs=1, forward_max_area=10**6,
                                   forward_min_channel_pairs=1)
SHAPES = [(3, 5, 7, 9, 3, 1, 1), (3, 5, 7, 9, 3, 2, 1), (5, 4, 6, 7, 1, 2, 0), (2, 3, 4, 6, 3, 1, 0),
          (1, 2, 3, 5, 5, 2, 2), (3, 3, 5, 5, 5, 1, 1)]


def float64_case(seed, batch, channels, out_channels, size, kernel, stride, padding):
    """x, weight, grad_out, PyTorch's output and (dL/dx, dL/dW) for one random float64 convolution."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, dtype=torch.float64, generator=generator)
    weight = torch.randn(out_channels, channels, kernel, kernel, dtype=torch.float64, generator=generator)
    out = torch.nn.functional.conv2d(x, weight, None, stride, padding)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=generator)
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [stride] * 2,
                                                                 [padding] * 2, [1, 1], False, [0, 0], 1,
                                                                 [True, True, False])
    return x, weight, grad_out, out, grad_x, grad_weight


@pytest.mark.parametrize("batch,channels,out_channels,size,kernel,stride,padding", SHAPES)
def test_matmul_forward_and_input_gradient_equal_convolution_in_float64(batch, channels, out_channels, size, kernel,
                                                                         stride, padding):
    x, weight, grad_out, out, expected_grad_x, _ = float64_case(batch * 10 + size, batch, channels, out_channels,
                                                                size, kernel, stride, padding)
    for layout in (torch.contiguous_format, torch.channels_last):
        result = matmul_convolution(x.contiguous(memory_format=layout), weight, (stride, stride), (padding, padding))
        assert result.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(result, out, rtol=1e-12, atol=1e-12)
        applies = flipped_input_gradient_applies((kernel, kernel), (stride, stride), (padding, padding))
        assert applies == (stride == 1)
        if applies:  # what _MatmulConv.backward computes for dL/dx
            grad_x = matmul_convolution(grad_out.contiguous(memory_format=layout), weight.flip(2, 3).transpose(0, 1),
                                        (1, 1), (kernel - 1 - padding,) * 2)
            torch.testing.assert_close(grad_x, expected_grad_x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch,channels,out_channels,size,kernel,stride,padding", SHAPES)
def test_weight_gradient_equals_convolution_backward_in_float64(batch, channels, out_channels, size, kernel,
                                                                 stride, padding):
    x, weight, grad_out, _, _, expected = float64_case(batch * 100 + size, batch, channels, out_channels, size,
                                                       kernel, stride, padding)
    for layout in (torch.contiguous_format, torch.channels_last):
        result = weight_gradient(grad_out.contiguous(memory_format=layout), x.contiguous(memory_format=layout),
                                 (kernel, kernel), (stride, stride), (padding, padding))
        torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def test_the_swapped_layer_trains_like_conv2d_under_bf16_autocast_and_falls_back_elsewhere():
    torch.manual_seed(0)
    stock = nn.Sequential(nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False), nn.Conv2d(4, 4, 3,
                                                                                                        groups=2))
    swapped = use_matmul_convolutions(copy.deepcopy(stock))
    assert [type(m) for m in swapped] == [MatmulConv2d, nn.ReLU, MatmulConv2d, nn.Conv2d]
    assert swapped.state_dict().keys() == stock.state_dict().keys()
    for layer in swapped:
        if isinstance(layer, MatmulConv2d):
            layer.rules = EVERY_PASS_AS_MATMUL  # take the matmul passes at these tiny sizes
    x = torch.randn(5, 6, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()

    def gradients(model, autocast):
        model.zero_grad()
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        out.float().square().sum().backward()
        return out, [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]

    for autocast in (True, False):  # bf16: the matmul path; fp32: nn.Conv2d's own
        expected_out, expected = gradients(stock, autocast)
        out, result = gradients(swapped, autocast)
        assert out.dtype == expected_out.dtype
        tolerance = dict(rtol=0.05, atol=0.05) if autocast else dict(rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.float(), expected_out.float(), **tolerance)
        for grad, reference in zip(result, expected):
            torch.testing.assert_close(grad, reference, **tolerance)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # a momentum network
            torch.testing.assert_close(swapped(x).float(), stock(x).float(), **tolerance)


def test_the_matmul_path_compiles_and_gives_eager_gradients():
    """`--compile` traces the custom backward (aot_eager: the same graph Inductor gets, without code generation)."""
    torch.manual_seed(1)
    model = use_matmul_convolutions(nn.Sequential(nn.Conv2d(4, 6, 3, 1, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, 2, 1)))
    for layer in model:
        if isinstance(layer, MatmulConv2d):
            layer.rules = EVERY_PASS_AS_MATMUL
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    results = []
    for network in (model, compiled):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = network(x)
        out.float().sum().backward()
        results.append([out.float()] + [p.grad.clone() for p in model.parameters()])
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced, eager)


@pytest.mark.parametrize("amx", [True, False])
def test_the_rules_are_the_ones_measured_on_this_kind_of_cpu(monkeypatch, amx):
    """AMX: weight gradients as matmuls from 8×8 maps, forwards from 256→256 on 4×4; AVX512-BF16 alone
    (Zen 5): oneDNN keeps 8×8 maps and the 256→256 forward on 4×4 (bench.py conv's tables in BENCHMARKS.md)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    rules = cpu_matmul_rules()
    assert rules == (AMX_RULES if amx else AVX512_BF16_RULES)
    # (in, out, output area) → (weight gradient, forward and input gradient) as matmuls
    expected = {(64, 64, 32 * 32): (False, False), (256, 256, 8 * 8): (amx, False), (128, 128, 7 * 7): (amx, False),
                (256, 256, 4 * 4): (True, amx), (256, 512, 4 * 4): (True, True), (512, 512, 2 * 2): (True, True)}
    for (in_channels, out_channels, area), ways in expected.items():
        layer = MatmulConv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        layer.rules = rules
        assert layer.matmul_passes(area) == ways, (in_channels, out_channels, area)
