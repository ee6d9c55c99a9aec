"""`python train/bench.py conv`: one convolution's backward under bf16 autocast on a CPU, PyTorch's own
(oneDNN's weight-gradient kernel) against models/matmul_weight_grad.py's k_h·k_w matrix products, per
layer shape of the CIFAR ResNets, the two ways alternating over rounds in one process. These figures set
MAX_AREA and MIN_CHANNEL_PAIRS there."""
from __future__ import annotations

import copy
import json
import statistics
import time

import torch
import torch.nn as nn

from models.matmul_weight_grad import MatmulWeightGradConv2d, use_matmul_weight_gradients

# (in channels, out channels, input size, stride): ResNet-18 (CIFAR stem) and ResNet-20/56 layers
SHAPES = ((64, 64, 32, 1), (128, 128, 16, 1), (256, 256, 8, 1), (512, 512, 4, 1), (128, 256, 16, 2),
          (256, 512, 8, 2), (16, 16, 32, 1), (64, 64, 8, 1), (128, 128, 8, 1), (64, 128, 16, 2))


def backward_seconds(layer: nn.Module, x: torch.Tensor) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    grad = torch.randn_like(out)
    start = time.perf_counter()
    out.backward(grad)
    return time.perf_counter() - start


def run(batch: int, rounds: int, output: str | None) -> list[dict]:
    print(f"bf16 autocast, channels_last, batch {batch}, torch threads {torch.get_num_threads()}, median of {rounds}")
    print(f"{'in':>5}{'out':>5}{'size':>6}{'stride':>8}{'pytorch ms':>12}{'matmul ms':>11}{'speed-up':>10}")
    records = []
    for in_channels, out_channels, size, stride in SHAPES:
        torch.manual_seed(0)
        stock = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False).to(memory_format=torch.channels_last)
        matmul = use_matmul_weight_gradients(copy.deepcopy(stock))
        matmul.max_area, matmul.min_channel_pairs = 10**9, 1  # always the matmul path, whatever the defaults pick
        x = torch.randn(batch, in_channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
        seconds = {"pytorch": [], "matmul": []}
        backward_seconds(stock, x), backward_seconds(matmul, x)  # warm-up: oneDNN builds its primitives
        for _ in range(rounds):
            for name, layer in (("pytorch", stock), ("matmul", matmul)):
                seconds[name].append(backward_seconds(layer, x))
        pytorch, ours = (statistics.median(seconds[name]) for name in ("pytorch", "matmul"))
        output_area = ((size - 1) // stride + 1) ** 2
        default = (output_area <= MatmulWeightGradConv2d.max_area
                   and in_channels * out_channels >= MatmulWeightGradConv2d.min_channel_pairs)
        record = {"benchmark": "conv_backward", "in_channels": in_channels, "out_channels": out_channels,
                  "size": size, "stride": stride, "batch": batch, "pytorch_ms": round(1e3 * pytorch, 2),
                  "matmul_ms": round(1e3 * ours, 2), "speedup": round(pytorch / ours, 2), "matmul_by_default": default}
        records.append(record)
        print(f"{in_channels:>5}{out_channels:>5}{size:>6}{stride:>8}{record['pytorch_ms']:>12.1f}"
              f"{record['matmul_ms']:>11.1f}{record['speedup']:>9.2f}x" + ("  (default: matmul)" if default else ""))
        if output:
            with open(output, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    return records
