"""The matmul convolution passes against PyTorch's convolution: float64 on awkward shapes (odd batch, channels,
sizes; strides 1 and 2; 1×1, 3×3 and 5×5 kernels; maps down to 1×1, where most taps read padding) for the
forward, the weight gradient and the flipped-kernel input gradient; the swapped layer under bf16 autocast with
every mix of ways; and the per-layer choice of ways (models/conv_ways.py)."""
import copy

import pytest
import torch
import torch.nn as nn

from models import conv_ways
from models.conv_ways import ONEDNN, ConvWays
from models.cpu_conv2d import MatmulConv2d, use_matmul_convolutions
from models.matmul_conv import flipped_input_gradient_applies, matmul_convolution, tap_segments, weight_gradient
from train import machine_cache

EVERY_PASS_AS_MATMUL = ConvWays(forward=True, input_gradient=True, weight_gradient=True)
# (batch, in, out, size, kernel, stride, padding); the last four: 2×2 and 1×1 maps, where most taps read
# padding, a 1×1 kernel whose border outputs read only padding, and a stride that skips the last input row
SHAPES = [(3, 5, 7, 9, 3, 1, 1), (3, 5, 7, 9, 3, 2, 1), (5, 4, 6, 7, 1, 2, 0), (2, 3, 4, 6, 3, 1, 0),
          (1, 2, 3, 5, 5, 2, 2), (3, 3, 5, 5, 5, 1, 1), (3, 5, 3, 2, 3, 1, 1), (2, 3, 5, 1, 3, 1, 1),
          (3, 2, 4, 3, 1, 1, 1), (2, 3, 3, 6, 3, 2, 1)]


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


@pytest.mark.parametrize("in_size,kernel,stride,padding", [(2, 3, 1, 1), (4, 3, 1, 1), (8, 3, 2, 1), (7, 3, 2, 1),
                                                          (1, 1, 1, 1), (3, 1, 2, 1), (5, 5, 1, 2), (6, 3, 1, 0)])
def test_tap_segments_cover_every_output_once_with_exactly_its_taps_inside_the_input(in_size, kernel, stride,
                                                                                      padding):
    out_size = (in_size + 2 * padding - kernel) // stride + 1
    segments = tap_segments(in_size, out_size, kernel, stride, padding)
    covered = [y for first, end, _, _ in segments for y in range(first, end)]
    assert covered == list(range(out_size))
    for first, end, tap_first, tap_end in segments:
        for y in range(first, end):
            inside = [t for t in range(kernel) if 0 <= y * stride + t - padding < in_size]
            assert list(range(tap_first, tap_end)) == inside, (y, segments)
    if (in_size, kernel, padding) == (2, 3, 1):  # 2×2 maps: each output reads 2 of the 3 taps per dimension
        assert segments == [(0, 1, 1, 3), (1, 2, 0, 2)]


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
        assert applies == (stride == 1 and padding <= kernel - 1)
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


@pytest.mark.parametrize("ways", [EVERY_PASS_AS_MATMUL, ConvWays(weight_gradient=True), ConvWays(forward=True),
                                  ConvWays(input_gradient=True, weight_gradient=True)])
def test_the_swapped_layer_trains_like_conv2d_under_bf16_autocast_and_falls_back_elsewhere(ways):
    torch.manual_seed(0)
    stock = nn.Sequential(nn.Conv2d(6, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False), nn.Conv2d(4, 4, 3,
                                                                                                        groups=2))
    swapped = use_matmul_convolutions(copy.deepcopy(stock))
    assert [type(m) for m in swapped] == [MatmulConv2d, nn.ReLU, MatmulConv2d, nn.Conv2d]
    assert swapped.state_dict().keys() == stock.state_dict().keys()
    for layer in swapped:
        if isinstance(layer, MatmulConv2d):
            layer.forced_ways = ways  # these passes as matmuls at these tiny sizes, the rest oneDNN's
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
            layer.forced_ways = EVERY_PASS_AS_MATMUL
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


def test_a_compiled_network_takes_the_ways_stored_for_this_machine(monkeypatch, tmp_path):
    """torch.compile cannot time a layer; the ways an earlier run stored are read when the layers are swapped in."""
    from models import cpu_conv2d

    monkeypatch.setattr(machine_cache, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(conv_ways, "_chosen", {})
    monkeypatch.setattr(conv_ways, "_loaded", False)
    key = "64>128 k(3, 3) s(1, 1) p(1, 1) on (2, 64, 4, 4) channels_last"
    machine_cache.store(conv_ways.CACHE_KIND, machine_cache.machine_key(key), vars(ConvWays(weight_gradient=True)))
    # a stand-in matmul weight gradient of zeros (tracing forbids side effects such as counting calls)
    monkeypatch.setattr(cpu_conv2d, "weight_gradient",
                        lambda grad_out, x, kernel, *_: torch.zeros(grad_out.shape[1], x.shape[1], *kernel,
                                                                    dtype=x.dtype))
    monkeypatch.setattr(conv_ways, "fastest_ways", lambda *a, **k: pytest.fail("timed while a stored choice exists"))
    model = use_matmul_convolutions(nn.Sequential(nn.Conv2d(64, 128, 3, 1, 1)))
    torch._dynamo.reset()  # no trace of another test's (with the real weight gradient) is reused
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compiled(torch.randn(2, 64, 4, 4).contiguous(memory_format=torch.channels_last)).float().sum().backward()
    assert not model[0].weight.grad.any()  # the stored way (matmul) ran, not oneDNN's
    assert model[0].bias.grad.abs().sum() > 0


def test_each_pass_takes_the_way_that_timed_faster(monkeypatch):
    """A fake clock: oneDNN's forward and input gradient take 1 tick, the matmul ones 2; the weight gradient the
    other way round. The choice follows the medians, per pass."""
    now = [0.0]
    costs = {("forward", "pytorch"): 1, ("forward", "matmul"): 2, ("input_gradient", "pytorch"): 1,
             ("input_gradient", "matmul"): 2, ("weight_gradient", "pytorch"): 3, ("weight_gradient", "matmul"): 1}

    def functions(*_):
        def run(key):
            return lambda: now.__setitem__(0, now[0] + costs[key])
        return {name: {way: run((name, way)) for way in ("pytorch", "matmul")} for name in conv_ways.PASSES}

    monkeypatch.setattr(conv_ways, "pass_functions", functions)
    x, weight = torch.zeros(2, 128, 4, 4), torch.zeros(128, 128, 3, 3)
    ways = conv_ways.fastest_ways(x, weight, (1, 1), (1, 1), clock=lambda: now[0])
    assert ways == ConvWays(forward=False, input_gradient=False, weight_gradient=True)
    costs[("input_gradient", "matmul")] = 0.5
    assert conv_ways.fastest_ways(x, weight, (1, 1), (1, 1), clock=lambda: now[0]).input_gradient


def test_a_layer_is_timed_once_per_machine_and_batch_shape_and_the_run_s_random_stream_is_untouched(monkeypatch,
                                                                                                  tmp_path):
    monkeypatch.setattr(machine_cache, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(conv_ways, "_chosen", {})  # this process's choices, restored afterwards
    monkeypatch.setattr(conv_ways, "_loaded", False)
    timed = []
    real = conv_ways.fastest_ways
    monkeypatch.setattr(conv_ways, "fastest_ways", lambda *a, **k: timed.append(tuple(a[0].shape)) or real(*a, **k))
    weight = torch.randn(128, 64, 3, 3)
    small, narrow = torch.randn(3, 64, 8, 8), torch.randn(3, 8, 8, 8)
    state = torch.get_rng_state()
    ways = conv_ways.ways_for(small, weight, (2, 2), (1, 1))
    assert torch.equal(torch.get_rng_state(), state)  # its gradient for timing has its own generator
    assert conv_ways.ways_for(small, weight, (2, 2), (1, 1)) == ways and timed == [(3, 64, 8, 8)]
    assert conv_ways.ways_for(small[:2], weight, (2, 2), (1, 1)) is not None and len(timed) == 2  # a new batch
    channels_last = small.contiguous(memory_format=torch.channels_last)  # a new layout: timed on its own
    assert conv_ways.ways_for(channels_last, weight, (2, 2), (1, 1)) is not None and len(timed) == 3
    # a large map, or a narrow layer, is never timed: oneDNN
    assert conv_ways.ways_for(torch.randn(3, 64, 32, 32), weight, (1, 1), (1, 1)) == ONEDNN
    assert conv_ways.ways_for(narrow, torch.randn(8, 8, 3, 3), (1, 1), (1, 1)) == ONEDNN and len(timed) == 3
    # the next process (here: the same one, its choices forgotten) reads the machine's file, and times nothing
    conv_ways.forget()
    assert conv_ways.ways_for(small, weight, (2, 2), (1, 1)) == ways and len(timed) == 3
    stored = machine_cache.load(conv_ways.CACHE_KIND)
    assert len(stored) == 3 and all(key.startswith(machine_cache.machine_key()) for key in stored)
    # another machine's entries in the same file (a shared home directory) are not taken
    machine_cache.store(conv_ways.CACHE_KIND,
                        "Other CPU|2|2|2.13.0|512>512 k(3, 3) s(1, 1) p(1, 1) on (1, 512, 2, 2) nchw",
                        vars(ConvWays(forward=True)))
    conv_ways.forget()
    conv_ways.load_machine_choices()
    assert set(conv_ways._chosen) == {key.rsplit("|", 1)[1] for key in stored}
