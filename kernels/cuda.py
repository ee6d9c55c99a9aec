"""CUDA kernels (numba-cuda). One block per row for the reductions, one thread per element for
the gradients and views. Launched on torch's current stream; under NUMBA_ENABLE_CUDASIM=1 the
same kernels run in Numba's simulator on host arrays (small sizes only: it is slow).

Out-of-range labels never touch memory out of bounds: the kernel writes NaN for that row and
raises a device flag that `raise_pending_label_error` checks without a sync in the hot path.

Each kernel declares its one signature (`SIGNATURES`, the types kernels/ops.py passes): `compiled()` compiles
them all on first use with `cache=True`, so a process loads them from Numba's cache instead of compiling at its
first step, and a launch never infers types. tests/test_kernels.py compiles every signature to PTX on a CPU.
"""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace

from numba import config, cuda, float32

from .indexing import rotated_source

LOGITS = "float32[:, ::1]"  # [rows, columns], C-contiguous (kernels/ops.py's _kernel_input)
ROWS = "float32[::1]"
STATS = "float32[:, ::1]"  # per-row (max, log-sum)
SIGNATURES: dict[str, str] = {}  # kernel name → its signature


def kernel(signature: str):
    """Records a kernel's signature; the function stays plain Python until `compiled()`."""
    def record(function):
        SIGNATURES[function.__name__] = signature
        return function
    return record

# Threads per row-reduction block (a power of two) and per element-wise block. The simulator runs
# every thread as a Python thread, so it gets small blocks: the same code paths, far fewer threads.
THREADS = 8 if config.ENABLE_CUDASIM else 128
ELEMENT_THREADS = 16 if config.ENABLE_CUDASIM else 256


@cuda.jit(device=True)
def _block_reduce(shared, take_max, value):
    """Tree reduction over the block: the maximum where take_max, else the sum; every thread gets it."""
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if tid < stride:
            other = shared[tid + stride]
            shared[tid] = max(shared[tid], other) if take_max else shared[tid] + other
        cuda.syncthreads()
        stride //= 2
    result = shared[0]
    cuda.syncthreads()
    return result


@kernel(f"void({LOGITS}, int64[::1], int64, {ROWS}, {STATS}, int32[::1])")
def joint_ce_forward(logits, labels, num_transforms, row_loss, row_stats, error_flag):
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    columns = logits.shape[1]
    shared = cuda.shared.array(THREADS, float32)
    peak = -math.inf
    for k in range(tid, columns, THREADS):
        peak = max(peak, float32(logits[r, k]))
    peak = _block_reduce(shared, True, peak)
    total = float32(0.0)
    for k in range(tid, columns, THREADS):
        total += math.exp(float32(logits[r, k]) - peak)
    total = _block_reduce(shared, False, total)
    if tid == 0:
        log_total = math.log(total)
        target = labels[r // num_transforms] * num_transforms + r % num_transforms
        row_stats[r, 0] = peak  # max and log-sum kept apart: see kernels/cpu.py
        row_stats[r, 1] = log_total
        if 0 <= target < columns:
            row_loss[r] = (peak - float32(logits[r, target])) + log_total
        else:
            row_loss[r] = math.nan
            error_flag[0] = 1


@kernel(f"void({LOGITS}, int64[::1], int64, {STATS}, float32[:], {LOGITS})")  # row_grad: any stride
def joint_ce_backward(logits, labels, num_transforms, row_stats, row_grad, grad):
    index = cuda.grid(1)  # one thread per gradient element, row-major: any row count fits a 1-D grid
    columns = logits.shape[1]
    r, k = index // columns, index % columns
    if r < logits.shape[0]:
        target = labels[r // num_transforms] * num_transforms + r % num_transforms
        value = math.exp((float32(logits[r, k]) - row_stats[r, 0]) - row_stats[r, 1])
        if k == target:
            value -= float32(1.0)
        grad[r, k] = value * row_grad[r]


@kernel(f"void({LOGITS}, int64, {LOGITS})")
def aggregate_forward(logits, num_transforms, scores):
    b, i = cuda.grid(2)
    if b < scores.shape[0] and i < scores.shape[1]:
        total = float32(0.0)
        for j in range(num_transforms):
            total += float32(logits[b * num_transforms + j, i * num_transforms + j])
        scores[b, i] = total / num_transforms


@kernel(f"void({LOGITS}, int64, {LOGITS})")
def aggregate_backward(grad_scores, num_transforms, grad):
    index = cuda.grid(1)
    r, k = index // grad.shape[1], index % grad.shape[1]
    if r < grad.shape[0]:
        if k % num_transforms == r % num_transforms:
            grad[r, k] = grad_scores[r // num_transforms, k // num_transforms] / num_transforms
        else:
            grad[r, k] = 0.0


@kernel(f"void({LOGITS}, {LOGITS}, float32, {ROWS}, {STATS}, {STATS})")
def kl_forward(student, teacher, inverse_temperature, row_kl, stats_student, stats_teacher):
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    columns = student.shape[1]
    shared = cuda.shared.array(THREADS, float32)
    peak_s, peak_t = -math.inf, -math.inf
    for k in range(tid, columns, THREADS):
        peak_s = max(peak_s, float32(student[r, k]) * inverse_temperature)
        peak_t = max(peak_t, float32(teacher[r, k]) * inverse_temperature)
    peak_s = _block_reduce(shared, True, peak_s)
    peak_t = _block_reduce(shared, True, peak_t)
    total_s, total_t = float32(0.0), float32(0.0)
    for k in range(tid, columns, THREADS):
        total_s += math.exp(float32(student[r, k]) * inverse_temperature - peak_s)
        total_t += math.exp(float32(teacher[r, k]) * inverse_temperature - peak_t)
    log_total_s = math.log(_block_reduce(shared, False, total_s))
    log_total_t = math.log(_block_reduce(shared, False, total_t))
    kl = float32(0.0)
    for k in range(tid, columns, THREADS):
        log_p = (float32(teacher[r, k]) * inverse_temperature - peak_t) - log_total_t
        log_q = (float32(student[r, k]) * inverse_temperature - peak_s) - log_total_s
        kl += math.exp(log_p) * (log_p - log_q)
    kl = _block_reduce(shared, False, kl)
    if tid == 0:
        row_kl[r] = kl
        stats_student[r, 0], stats_student[r, 1] = peak_s, log_total_s
        stats_teacher[r, 0], stats_teacher[r, 1] = peak_t, log_total_t


@kernel(f"void({LOGITS}, {LOGITS}, float32, {STATS}, {STATS}, {ROWS}, {LOGITS})")
def kl_backward(student, teacher, inverse_temperature, stats_student, stats_teacher, row_grad, grad):
    index = cuda.grid(1)
    r, k = index // student.shape[1], index % student.shape[1]
    if r < student.shape[0]:
        q = math.exp((float32(student[r, k]) * inverse_temperature - stats_student[r, 0]) - stats_student[r, 1])
        p = math.exp((float32(teacher[r, k]) * inverse_temperature - stats_teacher[r, 0]) - stats_teacher[r, 1])
        grad[r, k] = (q - p) * (row_grad[r] * inverse_temperature)


@cuda.jit(device=True)
def element_position(index, height, width, channels):
    """(row, h, w, c) of flat element `index` of a [rows, H, W, C] array: the view kernels' one thread each."""
    return (index // (channels * width * height), (index // (channels * width)) % height, (index // channels) % width,
            index % channels)


@kernel("void(uint8[:, :, :, ::1], int32[::1], int32[:, ::1], float32[::1], float32[::1], float32[:, :, :, :])")
def expand_views(images, quarter_turns, channel_orders, scale, shift, out_hwc):
    """One thread per output element of the [B·M, H, W, C] view."""
    index = cuda.grid(1)
    rows, height, width, channels = out_hwc.shape
    if index >= rows * height * width * channels:
        return
    row, h, w, c = element_position(index, height, width, channels)
    num_views = quarter_turns.shape[0]
    b, j = row // num_views, row % num_views
    sh, sw = rotated_source(quarter_turns[j], h, w, height, width)
    source = channel_orders[j, c]
    out_hwc[row, h, w, c] = float32(images[b, sh, sw, source]) * scale[source] + shift[source]


@kernel(("void(uint8[:, :, :, ::1], int64[::1], int64[:, ::1], uint8[::1], int64, int32[::1], int32[:, ::1], "
        "float32[::1], float32[::1], float32[:, :, :, :])"))
def gather_views(dataset, indices, offsets, flips, padding, quarter_turns, channel_orders, scale, shift, out_hwc):
    """One thread per output element of the [B·M, H, W, C] views of a training batch, made straight from the
    resident dataset: image indices[b], cropped at offsets[b] (top, left) in its zero-padded copy, mirrored where
    flips[b], then view j's rotation and channel order, normalised (kernels/reference.py's crop_and_flip, then
    expand_views, in one pass: each output element is written once and no batch is materialised between)."""
    index = cuda.grid(1)
    rows, height, width, channels = out_hwc.shape
    if index >= rows * height * width * channels:
        return
    row, h, w, c = element_position(index, height, width, channels)
    num_views = quarter_turns.shape[0]
    b, j = row // num_views, row % num_views
    sh, sw = rotated_source(quarter_turns[j], h, w, height, width)
    if flips[b]:
        sw = width - 1 - sw
    y, x = offsets[b, 0] + sh - padding, offsets[b, 1] + sw - padding
    source = channel_orders[j, c]
    value = float32(0.0)  # the zero padding
    if 0 <= y < height and 0 <= x < width:
        value = float32(dataset[indices[b], y, x, source])
    out_hwc[row, h, w, c] = value * scale[source] + shift[source]


@functools.cache
def compiled() -> SimpleNamespace:
    """Every kernel compiled for its signature (cached on disk), with the block sizes its launches use."""
    launchable = {name: cuda.jit(signature, cache=True)(globals()[name]) for name, signature in SIGNATURES.items()}
    return SimpleNamespace(THREADS=THREADS, ELEMENT_THREADS=ELEMENT_THREADS, **launchable)
