"""`python train/bench.py conv`: each pass of one bf16 convolution on a CPU (forward, input gradient, weight
gradient), PyTorch's own (oneDNN) against models/matmul_conv.py's matrix products, per layer shape of the CIFAR
ResNets and of SwAV's small crops, the two ways alternating over rounds in one process: the same timing that
models/conv_ways.py runs on a layer's first batch to choose its ways, here for every shape with more rounds."""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from models.conv_ways import PASSES, faster_ways, is_candidate, pass_functions, time_passes
from train.bench.common import append_json_lines

# (in channels, out channels, input size, stride): ResNet-18 (CIFAR stem) and ResNet-20/56 layers, and the
# deeper layers of ResNet-18 on 14-pixel crops (SwAV's local views)
SHAPES = ((64, 64, 32, 1), (128, 128, 16, 1), (256, 256, 8, 1), (512, 512, 4, 1), (128, 256, 16, 2),
          (256, 512, 8, 2), (16, 16, 32, 1), (64, 64, 8, 1), (128, 128, 8, 1), (64, 128, 16, 2),
          (128, 128, 7, 1), (256, 256, 4, 1), (512, 512, 2, 1))


def run(batch: int, rounds: int, output: str | None) -> list[dict]:
    print(f"bf16, channels_last, batch {batch}, torch threads {torch.get_num_threads()}, median of {rounds}, "
          f"ms per pass (pytorch / matmul; * = the faster, which a training run would choose: models/conv_ways.py; "
          f"shapes marked - are never timed there, oneDNN runs them)")
    print(f"{'in':>5}{'out':>5}{'size':>6}{'stride':>8}" + "".join(f"{name:>22}" for name in PASSES))
    records = []
    for in_channels, out_channels, size, stride in SHAPES:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, in_channels, size, size, generator=generator).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator).to(torch.bfloat16)
        grad_out = torch.randn_like(F.conv2d(x, weight, None, stride, 1))
        seconds = time_passes(pass_functions(x, weight, grad_out, (stride, stride), (1, 1)), rounds)
        record = {"benchmark": "conv", "in_channels": in_channels, "out_channels": out_channels, "size": size,
                  "stride": stride, "batch": batch,
                  "candidate": is_candidate(in_channels, out_channels, ((size - 1) // stride + 1) ** 2)}
        for (name, way), times in seconds.items():
            record[f"{name}_{way}_ms"] = round(1e3 * statistics.median(times), 2)
        ways = faster_ways(seconds)
        record["faster"] = {name: "matmul" if getattr(ways, name) else "pytorch" for name in PASSES}
        records.append(record)
        cells = []
        for name in PASSES:
            pytorch, matmul = record[f"{name}_pytorch_ms"], record.get(f"{name}_matmul_ms")
            mark = {"pytorch": ("*", ""), "matmul": ("", "*")}[record["faster"][name]]
            cells.append(f"{pytorch:.1f}{mark[0]} / " + (f"{matmul:.1f}{mark[1]}" if matmul is not None else "-"))
        print(f"{in_channels:>5}{out_channels:>5}{size:>6}{stride:>8}" + "".join(f"{cell:>22}" for cell in cells)
              + ("" if record["candidate"] else "   -"))
        append_json_lines(output, [record])
    return records
