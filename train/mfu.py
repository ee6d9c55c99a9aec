"""Model FLOPs utilisation: FLOPs of one view counted once for a model, against the device's peak.

Peaks: datasheet dense rates for GPUs whose exact variant the name tells (an H100 PCIe, NVL and SXM
differ by 30%); otherwise, and on CPUs, the best measured rate of a large matmul and of a channels_last
3×3 convolution (a floor for the true peak, so MFU against it is an upper estimate), timed for about a
second; a precision the CPU only emulates (bf16 without AVX512-BF16 or AMX) is bounded by the fp32 rate
instead of being timed. A CPU's measured
peak is cached per machine, precision and thread count (train/machine_cache.py), so runs do not pay
for it twice.
"""
from __future__ import annotations

import functools
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from train import machine_cache
from train.machine_cache import cpu_bf16_units, machine_key

# Dense peaks (FLOP/s) by the device-name pattern that identifies the variant, most specific first.
# tf32: the tensor-core rate fp32 matmuls and convolutions run at where TF32 is allowed (cuDNN allows it by default).
GPU_PEAKS = (
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("H100 80GB HBM3", {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12}),  # SXM5
    ("H100 SXM", {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    ("H200 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12}),  # SXM (the NVL is matched above)
    ("A100-SXM4", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("A100-PCIE", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
)


def tf32_enabled() -> bool:
    """Whether fp32 matmuls or convolutions may run on TF32 tensor cores (cuDNN's convolutions do by default)."""
    return torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32


def datasheet_precision(precision: str) -> str:
    """The datasheet column an fp32 run on a GPU is measured against: TF32's where TF32 is on, else MFU could
    pass 100%."""
    return "tf32" if precision == "fp32" and tf32_enabled() else precision


def datasheet_peak(device_name: str, precision: str) -> tuple[float, str] | None:
    for pattern, peaks in GPU_PEAKS:
        if pattern in device_name:
            return peaks[precision], f"{pattern} datasheet dense {precision}"
    return None  # an unknown variant (an "H100" alone could be any of three): measure instead


def best_rate(operation, flops: float, device: torch.device, repeats: int = 10, budget_s: float = 0.5) -> float:
    """The best of up to `repeats` timed calls, stopping once `budget_s` has been spent (a peak costs a run a
    second or two, not minutes, whatever the machine)."""
    operation()  # warm-up: thread pools, kernel selection
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        operation()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > budget_s:
            break
    return flops / best


def measured_precision(device: torch.device, precision: str) -> str:
    """The precision whose rate bounds `precision`'s on `device`: itself where the hardware computes it, fp32 on a
    CPU that only emulates bf16 (no AVX512-BF16 or AMX: each product is widened to fp32, so it cannot run faster
    than fp32, and timing the emulation would take minutes)."""
    if device.type == "cpu" and precision != "fp32" and not cpu_bf16_units():
        return "fp32"
    return precision


def measured_peak(device: torch.device, precision: str) -> tuple[float, str]:
    measured = measured_precision(device, precision)
    size = 2048 if device.type == "cpu" else 8192
    dtype = torch.float32 if measured == "fp32" else torch.bfloat16
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(0)  # the measurement leaves the run's random streams as they were
        matrix = torch.randn(size, size, device=device, dtype=dtype)
        images = torch.randn(256, 64, 16, 16, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device, dtype, memory_format=torch.channels_last)
        rates = {f"{size}² {measured} matmul": best_rate(lambda: matrix @ matrix, 2 * size**3, device),
                 f"3×3 conv 64ch 16² {measured}": best_rate(lambda: conv(images), 2 * 256 * 64 * 64 * 9 * 16 * 16,
                                                            device)}
    best = max(rates, key=rates.get)
    listing = ", ".join(f"{name} {rate / 1e9:,.0f} GFLOP/s" for name, rate in rates.items())
    emulated = (f"; {precision} is emulated on this CPU (no AVX512-BF16 or AMX), so its peak is the fp32 rate"
                if measured != precision else "")
    return rates[best], f"best measured rate ({best}; measured: {listing}{emulated})"


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device, precision: str, use_cache: bool = True) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for `precision` on `device`."""
    if device.type == "cuda":
        known = datasheet_peak(torch.cuda.get_device_name(device), datasheet_precision(precision))
        return known if known is not None else measured_peak(device, precision)
    key = machine_key(precision)
    cached = machine_cache.load("peak_flops") if use_cache else {}
    if key in cached:
        return cached[key][0], cached[key][1] + " (cached)"
    peak = measured_peak(device, precision)
    if use_cache:
        machine_cache.store("peak_flops", key, list(peak))
    return peak


def forward_flops_per_view(model: torch.nn.Module, views: torch.Tensor) -> float:
    """Forward FLOPs per view, counted in eval mode (BN statistics untouched) without gradients."""
    was_training = model.training
    model.eval()
    parameter = next(model.parameters(), None)  # the count does not depend on dtype: views in the weights' dtype
    views = views.to(parameter.dtype) if parameter is not None and views.is_floating_point() else views
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(views)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / len(views)


def flops_per_view(model: torch.nn.Module, views: torch.Tensor, teacher: torch.nn.Module | None = None) -> float:
    """Forward + backward FLOPs of one view (backward counted as twice the forward), plus a frozen
    teacher's forward where there is one."""
    flops = 3 * forward_flops_per_view(model, views)
    return flops + (forward_flops_per_view(teacher, views) if teacher is not None else 0.0)
