"""`python train/bench.py batchnorm`: a training-mode BatchNorm2d on bf16 channels_last activations on a CPU,
PyTorch's own kernel against models/cpu_batch_norm.py's Numba kernels, forward and backward per activation
shape of the CIFAR ResNets, the two ways alternating over rounds in one process."""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn

from models.cpu_batch_norm import CpuBatchNorm2d, use_cpu_batch_norm
from train.bench.common import append_json_lines

# (channels, size): ResNet-18 (CIFAR stem) and ResNet-20/56 activations, and narrow ones of 4M values and more
SHAPES = ((64, 32), (128, 16), (256, 8), (512, 4), (16, 32), (32, 16), (64, 8), (32, 32), (16, 48), (16, 64))


def pass_seconds(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(forward, backward) seconds of one pass."""
    start = time.perf_counter()
    out = layer(x)
    middle = time.perf_counter()
    out.backward(grad)
    return middle - start, time.perf_counter() - middle


def run(batch: int, rounds: int, output: str | None) -> list[dict]:
    print(f"bf16 channels_last, training mode, batch {batch}, torch threads {torch.get_num_threads()}, "
          f"median of {rounds}")
    print(f"{'channels':>9}{'size':>6}{'fwd pytorch':>13}{'fwd numba':>11}{'bwd pytorch':>13}{'bwd numba':>11}"
          f"{'speed-up':>10}  default")
    records = []
    for channels, size in SHAPES:
        torch.manual_seed(0)
        stock = nn.BatchNorm2d(channels)
        numba = use_cpu_batch_norm(copy.deepcopy(stock))
        numba.min_elements = 1  # always the Numba path, whatever the default picks
        x = torch.randn(batch, channels, size, size).to(torch.bfloat16).contiguous(
            memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn_like(x)
        seconds = {"pytorch": [], "numba": []}
        pass_seconds(stock, x, grad), pass_seconds(numba, x, grad)  # warm-up (Numba loads its cached code)
        for _ in range(rounds):
            for name, layer in (("pytorch", stock), ("numba", numba)):
                seconds[name].append(pass_seconds(layer, x, grad))
        ms = {name: [1e3 * statistics.median(times[k] for times in seconds[name]) for k in (0, 1)]
              for name in seconds}
        record = {"benchmark": "batchnorm", "channels": channels, "size": size, "batch": batch,
                  "forward_pytorch_ms": round(ms["pytorch"][0], 2), "forward_numba_ms": round(ms["numba"][0], 2),
                  "backward_pytorch_ms": round(ms["pytorch"][1], 2), "backward_numba_ms": round(ms["numba"][1], 2),
                  "speedup": round(sum(ms["pytorch"]) / sum(ms["numba"]), 2),
                  "numba_by_default": CpuBatchNorm2d(channels).takes(x)}
        records.append(record)
        print(f"{channels:>9}{size:>6}{record['forward_pytorch_ms']:>13.2f}{record['forward_numba_ms']:>11.2f}"
              f"{record['backward_pytorch_ms']:>13.2f}{record['backward_numba_ms']:>11.2f}{record['speedup']:>9.2f}x"
              f"  {'numba' if record['numba_by_default'] else 'pytorch'}")
        append_json_lines(output, [record])
    return records
