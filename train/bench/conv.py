"""`python train/bench.py conv`: each pass of one bf16 convolution on a CPU (forward, input gradient, weight
gradient), PyTorch's own (oneDNN) against models/matmul_conv.py's matrix products (the forward and the
stride-1 input gradient as one product over the unfolded input, the weight gradient as k_h·k_w products), per
layer shape of the CIFAR ResNets and of SwAV's small crops, the two ways alternating over rounds in one
process. These figures set the area and channel rules there, per CPU kind (AMX or AVX512-BF16 alone)."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from models.matmul_conv import (MatmulConv2d, flipped_input_gradient_applies, matmul_convolution,
                                weight_gradient)
from train.bench.common import append_json_lines

# (in channels, out channels, input size, stride): ResNet-18 (CIFAR stem) and ResNet-20/56 layers, and the
# deeper layers of ResNet-18 on 14-pixel crops (SwAV's local views)
SHAPES = ((64, 64, 32, 1), (128, 128, 16, 1), (256, 256, 8, 1), (512, 512, 4, 1), (128, 256, 16, 2),
          (256, 512, 8, 2), (16, 16, 32, 1), (64, 64, 8, 1), (128, 128, 8, 1), (64, 128, 16, 2),
          (128, 128, 7, 1), (256, 256, 4, 1), (512, 512, 2, 1))
PASSES = ("forward", "input_gradient", "weight_gradient")


def pass_functions(x, weight, grad_out, stride: int):
    """{pass: {way: a function running it}}; no matmul input gradient where the flipped kernel does not apply."""
    kernel, strides, padding = tuple(weight.shape[2:]), (stride, stride), (1, 1)

    def pytorch_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(grad_out, x, weight, None, list(strides), list(padding),
                                                           [1, 1], False, [0, 0], 1, mask)

    functions = {
        "forward": {"pytorch": lambda: F.conv2d(x, weight, None, strides, padding),
                    "matmul": lambda: matmul_convolution(x, weight, strides, padding)},
        "input_gradient": {"pytorch": pytorch_backward([True, False, False])},
        "weight_gradient": {"pytorch": pytorch_backward([False, True, False]),
                            "matmul": lambda: weight_gradient(grad_out, x, kernel, strides, padding)},
    }
    if flipped_input_gradient_applies(kernel, strides, padding):
        flipped = weight.flip(2, 3).transpose(0, 1)
        functions["input_gradient"]["matmul"] = lambda: matmul_convolution(grad_out, flipped, (1, 1), (1, 1))
    return functions


def default_ways(in_channels: int, out_channels: int, size: int, stride: int) -> dict[str, str]:
    """Which way MatmulConv2d takes for each pass of this layer under bf16 autocast on a CPU."""
    layer = MatmulConv2d(in_channels, out_channels, 3, stride, 1, bias=False)
    weight, forward = layer.matmul_passes(((size - 1) // stride + 1) ** 2)
    return {"forward": "matmul" if forward else "pytorch",
            "input_gradient": "matmul" if forward and stride == 1 else "pytorch",
            "weight_gradient": "matmul" if weight else "pytorch"}


def run(batch: int, rounds: int, output: str | None) -> list[dict]:
    rules = MatmulConv2d.rules.name  # what default_ways reads
    print(f"bf16, channels_last, batch {batch}, torch threads {torch.get_num_threads()}, median of {rounds}, "
          f"ms per pass (pytorch / matmul; * = the default under this CPU's rules: {rules})")
    print(f"{'in':>5}{'out':>5}{'size':>6}{'stride':>8}" + "".join(f"{name:>22}" for name in PASSES))
    records = []
    for in_channels, out_channels, size, stride in SHAPES:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, in_channels, size, size, generator=generator).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator).to(torch.bfloat16)
        grad_out = torch.randn_like(F.conv2d(x, weight, None, stride, 1))
        functions = pass_functions(x, weight, grad_out, stride)
        seconds = {(name, way): [] for name, ways in functions.items() for way in ways}
        for (name, way) in seconds:
            functions[name][way]()  # warm-up: oneDNN builds its primitives
        for _ in range(rounds):
            for (name, way) in seconds:
                start = time.perf_counter()
                functions[name][way]()
                seconds[(name, way)].append(time.perf_counter() - start)
        record = {"benchmark": "conv", "in_channels": in_channels, "out_channels": out_channels, "size": size,
                  "stride": stride, "batch": batch, "cpu_rules": rules,
                  "default": default_ways(in_channels, out_channels, size, stride)}
        for (name, way), times in seconds.items():
            record[f"{name}_{way}_ms"] = round(1e3 * statistics.median(times), 2)
        records.append(record)
        cells = []
        for name in PASSES:
            pytorch, matmul = record[f"{name}_pytorch_ms"], record.get(f"{name}_matmul_ms")
            mark = {"pytorch": ("*", ""), "matmul": ("", "*")}[record["default"][name]]
            cells.append(f"{pytorch:.1f}{mark[0]} / " + (f"{matmul:.1f}{mark[1]}" if matmul is not None else "-"))
        print(f"{in_channels:>5}{out_channels:>5}{size:>6}{stride:>8}" + "".join(f"{cell:>22}" for cell in cells))
        append_json_lines(output, [record])
    return records
