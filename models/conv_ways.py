"""Which way each pass of a bf16 convolution on a CPU runs: oneDNN's kernel (PyTorch's own) or the matrix
products of models/matmul_conv.py.

Which is faster depends on the CPU and on the layer: `python train/bench.py conv` on three CPUs (AMX; AVX512-BF16
at full width, AMD Zen 5; double-pumped, Zen 4) gave three different sets of winners (BENCHMARKS.md), so fixed
rules per CPU kind picked wrong on the next machine. Each candidate layer's passes are instead timed on its
first batch, the two ways alternating, as cuDNN's benchmark mode picks a GPU's algorithm; the choice is kept
per machine, batch shape and memory layout (train/machine_cache.py), so later runs, a resumed one too, take
the same ways without timing again. Candidates: outputs of at most 8×8 positions and at least 64·128 channel
pairs; on larger maps and narrower layers oneDNN won every pass on every CPU timed, so those layers are never
timed.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.matmul_conv import flipped_input_gradient_applies, matmul_convolution, output_size, weight_gradient
from train import machine_cache

PASSES = ("forward", "input_gradient", "weight_gradient")
MAX_AREA, MIN_CHANNEL_PAIRS = 64, 64 * 128
TIMED_ROUNDS = 3  # per way and pass, after one untimed run; the median decides
CACHE_KIND = "conv_ways"


@dataclass(frozen=True)
class ConvWays:
    """Which passes run as matrix products (the rest: oneDNN's kernels)."""
    forward: bool = False
    input_gradient: bool = False
    weight_gradient: bool = False


ONEDNN = ConvWays()
_chosen: dict[str, ConvWays] = {}  # this process's choices by layer and batch shape, the machine's stored ones too
_loaded = False  # whether the machine's stored choices are in _chosen
_machine = ""  # this machine's key prefix in the cache file (machine_cache.machine_key), read with them


def is_candidate(in_channels: int, out_channels: int, out_area: int) -> bool:
    return out_area <= MAX_AREA and in_channels * out_channels >= MIN_CHANNEL_PAIRS


def pass_functions(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, stride, padding) -> dict:
    """{pass: {way: a function running it}}; no matmul input gradient where the flipped kernel does not apply."""
    kernel, stride, padding = tuple(weight.shape[2:]), tuple(stride), tuple(padding)

    def pytorch_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(grad_out, x, weight, None, list(stride), list(padding),
                                                           [1, 1], False, [0, 0], 1, mask)

    functions = {
        "forward": {"pytorch": lambda: F.conv2d(x, weight, None, stride, padding),
                    "matmul": lambda: matmul_convolution(x, weight, stride, padding)},
        "input_gradient": {"pytorch": pytorch_backward([True, False, False])},
        "weight_gradient": {"pytorch": pytorch_backward([False, True, False]),
                            "matmul": lambda: weight_gradient(grad_out, x, kernel, stride, padding)},
    }
    if flipped_input_gradient_applies(kernel, stride, padding):
        flipped = weight.flip(2, 3).transpose(0, 1)
        transposed_padding = tuple(k - 1 - p for k, p in zip(kernel, padding))
        functions["input_gradient"]["matmul"] = lambda: matmul_convolution(grad_out, flipped, (1, 1),
                                                                           transposed_padding)
    return functions


def time_passes(functions: dict, rounds: int, clock=time.perf_counter) -> dict[tuple[str, str], list[float]]:
    """Seconds of each (pass, way) over `rounds` rounds, every way once per round, after one untimed run each
    (oneDNN builds its primitives on the first)."""
    seconds = {(name, way): [] for name, ways in functions.items() for way in ways}
    for name, way in seconds:
        functions[name][way]()
    for _ in range(rounds):
        for name, way in seconds:
            start = clock()
            functions[name][way]()
            seconds[(name, way)].append(clock() - start)
    return seconds


def fastest_ways(x: torch.Tensor, weight: torch.Tensor, stride, padding, clock=time.perf_counter) -> ConvWays:
    """Times every pass both ways on this batch (a gradient drawn from its own generator: the run's random
    streams are untouched) and keeps the faster of each."""
    x, weight = x.detach().to(torch.bfloat16), weight.detach().to(torch.bfloat16)
    out_h, out_w = output_size(x.shape[2:], weight.shape[2:], stride, padding)
    generator = torch.Generator().manual_seed(0)
    grad_out = torch.randn(x.shape[0], out_h, out_w, weight.shape[0], generator=generator).to(torch.bfloat16)
    grad_out = grad_out.permute(0, 3, 1, 2)  # channels_last, as autograd hands it over
    with torch.no_grad():
        return faster_ways(time_passes(pass_functions(x, weight, grad_out, stride, padding), TIMED_ROUNDS, clock))


def faster_ways(seconds: dict[tuple[str, str], list[float]]) -> ConvWays:
    """Per pass, matmul where its median time beats oneDNN's."""
    median = {key: statistics.median(times) for key, times in seconds.items()}
    return ConvWays(**{name: (name, "matmul") in median and median[name, "matmul"] < median[name, "pytorch"]
                       for name in PASSES})


def load_machine_choices() -> None:
    """The choices stored for this machine, into this process's (once; before torch.compile traces a layer,
    which cannot time or read files: models/cpu_conv2d.py calls this when it swaps the layers in)."""
    global _loaded, _machine
    if not _loaded:
        _machine = machine_cache.machine_key() + "|"
        for stored_key, ways in machine_cache.load(CACHE_KIND).items():
            if stored_key.startswith(_machine):
                _chosen.setdefault(stored_key[len(_machine):], ConvWays(**ways))
        _loaded = True


def ways_for(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> ConvWays:
    """This layer's ways for this batch shape: chosen before (in this process or stored for this machine), or
    timed now and stored. While torch.compile traces: what was chosen before, or oneDNN's."""
    out_h, out_w = output_size(x.shape[2:], weight.shape[2:], stride, padding)
    if not is_candidate(weight.shape[1], weight.shape[0], out_h * out_w):
        return ONEDNN
    layout = "channels_last" if x.is_contiguous(memory_format=torch.channels_last) else "nchw"
    key = (f"{weight.shape[1]}>{weight.shape[0]} k{tuple(weight.shape[2:])} s{tuple(stride)} p{tuple(padding)} "
           f"on {tuple(x.shape)} {layout}")
    if torch.compiler.is_compiling():
        return _chosen.get(key, ONEDNN)
    load_machine_choices()
    if key not in _chosen:
        _chosen[key] = fastest_ways(x, weight, stride, padding)
        machine_cache.store(CACHE_KIND, _machine + key, vars(_chosen[key]))
    return _chosen[key]


def forget() -> None:
    """Drops this process's choices, the machine's stored ones read too (tests; a changed cache file)."""
    global _loaded
    _chosen.clear()
    _loaded = False
