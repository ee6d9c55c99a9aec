"""CPU kernels (Numba, parallel over rows). One pass over each row per direction.

Equations (docs/methods.md): L_SLA, SLA+AG, and the τ²·KL distillation term; expand_views builds
the M views of the interleaved layout.

Speed on a CPU comes from SIMD, and two things stop LLVM from vectorising the obvious code:
llvmlite's PyPI build has no SVML, so `math.exp` on float32 stays a scalar libm call, and a
running float `max` is a serial dependency chain. So float32 rows use `exp_nonpositive` (a
vectorisable polynomial exp, within 2 ulp) and `row_max` an integer max over the float bits.
float64 rows (gradcheck, references) use `math.exp` and eight chains of float max.

Fast-math is granted per function, never `nnan`/`ninf` (a NaN logit gives a NaN loss, as in
torch): `SUMS` (reassociation, so sums vectorise) only where a reduction needs it, `EXACT`
(fused multiply-add only) everywhere else. Reassociation would be wrong there: it may rewrite
(x − max) − log Σ as x − (max + log Σ), which loses the softmax's digits for logits near 1e4.
"""
from __future__ import annotations

import math
import os

import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.extending import intrinsic, overload, register_jitable

from .indexing import rotated_source

# OpenMP before TBB: TBB's second thread joins late for kernels this short (compare with
# `NUMBA_THREADING_LAYER=tbb python -m train.commands.bench kernels --batches 256 --classes 100`). Both are thread-safe.
# GNU OpenMP is not fork-safe, which only matters to a forked child that itself runs Numba
# parallel code; none here does. The environment's NUMBA_THREADING_LAYER(_PRIORITY) wins.
if not {"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ):
    config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def follow_torch_threads() -> None:
    """Numba's thread count set to torch's. Under the OpenMP layer both share one OpenMP runtime, and each Numba
    launch sets that runtime's count to Numba's (the core count by default): a process that computes on one
    thread (OMP_NUM_THREADS=1, torch.set_num_threads) ran every later torch operation on all cores after the
    first kernel, so a run and its resume, started at different points, did not repeat each other's bits."""
    import numba
    import torch

    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, config.NUMBA_NUM_THREADS)))
    # the first call starts Numba's OpenMP pool, which sets the runtime's count to the pool's size (NUMBA_NUM_THREADS,
    # every core by default): torch then ran on every core under OMP_NUM_THREADS=1 (torchrun's setting for each rank)
    torch.set_num_threads(threads)

SUMS = {"reassoc", "contract"}
EXACT = {"contract"}


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bits are the int32 `bits` (an LLVM bitcast: vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _bits_of_float32(typingctx, value):
    """The int32 holding the IEEE-754 bits of the float32 `value` (an LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@register_jitable
def _ordered_key(bits):
    """Flips the magnitude bits of negative floats, so that signed int32 order is float order
    (and the map is its own inverse)."""
    return bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))


_LOG2E = np.float32(1.4426950408889634)
_LN2_HIGH = np.float32(0.693359375)  # ln 2 = HIGH + LOW, HIGH with few mantissa bits (Cody-Waite)
_LN2_LOW = np.float32(-2.12194440e-4)
_SMALLEST_EXPONENT = np.float32(-126.0)  # below 2**-126 the result is flushed to 0 (softmax terms < 1e-38)


def exp_nonpositive(x):
    """exp(x) for x ≤ 0 (a shifted logit): float32 → polynomial, float64 → math.exp."""
    return math.exp(x)


@overload(exp_nonpositive, fastmath=EXACT)
def _exp_nonpositive(x):
    if x != types.float32:
        return lambda x: math.exp(x)

    def exp_float32(x):
        # x = n·ln2 + g with |g| ≤ ln2/2, exp(x) = 2**n · exp(g); exp(g) by its degree-7 Taylor
        # polynomial (relative error < 1e-8 on that interval), 2**n by writing the exponent bits.
        n = np.floor(x * _LOG2E + np.float32(0.5))
        underflow = n < _SMALLEST_EXPONENT  # NaN compares false and stays NaN below
        n = max(n, _SMALLEST_EXPONENT)
        g = (x - n * _LN2_HIGH) - n * _LN2_LOW
        p = np.float32(1.0 / 5040.0)
        p = p * g + np.float32(1.0 / 720.0)
        p = p * g + np.float32(1.0 / 120.0)
        p = p * g + np.float32(1.0 / 24.0)
        p = p * g + np.float32(1.0 / 6.0)
        p = p * g + np.float32(0.5)
        p = p * g + np.float32(1.0)
        p = p * g + np.float32(1.0)
        exponent = np.int32(n) + np.int32(127)
        value = p * _float32_from_bits(exponent << 23)
        return np.float32(0.0) if underflow else value
    return exp_float32


def row_max(row):
    """max(row). A NaN may be dropped here; the sums of exponentials turn it into a NaN loss."""
    return row.max()


@overload(row_max)
def _row_max(row):
    if row.dtype == types.float32:
        def max_float32(row):
            # An integer max over order-preserving keys: LLVM vectorises it, while a float max
            # reduction stays a serial chain without `nnan` (slower even with 8 chains).
            peak = np.int32(-2**31)
            for k in range(row.shape[0]):
                peak = max(peak, _ordered_key(_bits_of_float32(row[k])))
            return _float32_from_bits(_ordered_key(peak))
        return max_float32

    def max_with_eight_chains(row):
        columns = row.shape[0]
        head = columns - columns % 8
        m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row.dtype.type(-np.inf)
        for k in range(0, head, 8):
            m0, m1, m2, m3 = max(m0, row[k]), max(m1, row[k + 1]), max(m2, row[k + 2]), max(m3, row[k + 3])
            m4, m5, m6, m7 = max(m4, row[k + 4]), max(m5, row[k + 5]), max(m6, row[k + 6]), max(m7, row[k + 7])
        peak = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
        for k in range(head, columns):
            peak = max(peak, row[k])
        return peak
    return max_with_eight_chains


@njit(fastmath=SUMS)
def row_sum_exp(row, peak):
    """Σ_k exp(row[k] − peak) in the row's dtype. Reassociation splits the sum over the vector
    lanes (dozens of partial sums), which keeps float32 rounding well under the softmax's tolerance;
    blocked float64 accumulation was slower in a side experiment."""
    total = row.dtype.type(0.0)
    for k in range(row.shape[0]):
        total += exp_nonpositive(row[k] - peak)
    return total


@njit(parallel=True, cache=True, fastmath=EXACT)
def joint_ce_forward(logits, labels, num_transforms, row_loss, row_stats):
    """row_loss[r] = logsumexp(L[r]) − L[r, y[b]·M + j]. row_stats[r] = (max, log Σ exp(L − max)): kept
    apart, since one float32 logsumexp of logits near 1e4 would lose the softmax's precision."""
    rows, columns = logits.shape
    for r in prange(rows):
        target = labels[r // num_transforms] * num_transforms + r % num_transforms
        peak = row_max(logits[r])
        log_total = math.log(row_sum_exp(logits[r], peak))
        row_stats[r, 0] = peak
        row_stats[r, 1] = log_total
        row_loss[r] = (peak - logits[r, target]) + log_total if 0 <= target < columns else np.nan


@njit(parallel=True, cache=True, fastmath=EXACT)
def joint_ce_backward(logits, labels, num_transforms, row_stats, row_grad, grad):
    """grad[r, k] = (softmax(L[r])_k − [k = target]) · row_grad[r], written once."""
    rows, columns = logits.shape
    for r in prange(rows):
        target = labels[r // num_transforms] * num_transforms + r % num_transforms
        scale = row_grad[r]
        peak, log_total = row_stats[r, 0], row_stats[r, 1]
        for k in range(columns):  # softmax_k = exp((L[r, k] − max) − log Σ), in that order
            grad[r, k] = exp_nonpositive((logits[r, k] - peak) - log_total) * scale
        if 0 <= target < columns:
            grad[r, target] = grad[r, target] - scale


@njit(parallel=True, cache=True, fastmath=EXACT)
def joint_ce_forward_and_grad(logits, labels, num_transforms, row_weight, row_loss, row_stats, grad):
    """joint_ce_forward, and grad = ∂(row_weight · Σ_r row_loss[r])/∂L written in the same pass: the
    exponentials of the sum are kept in `grad` and scaled by row_weight / Σ while the row is in cache."""
    rows, columns = logits.shape
    for r in prange(rows):
        target = labels[r // num_transforms] * num_transforms + r % num_transforms
        peak = row_max(logits[r])
        total = store_exp(logits[r], peak, grad[r])
        log_total = math.log(total)
        row_stats[r, 0] = peak
        row_stats[r, 1] = log_total
        row_loss[r] = (peak - logits[r, target]) + log_total if 0 <= target < columns else np.nan
        scale = grad.dtype.type(row_weight / total)  # one rounding, then a full-width multiply
        for k in range(columns):
            grad[r, k] = grad[r, k] * scale
        if 0 <= target < columns:
            grad[r, target] = grad[r, target] - grad.dtype.type(row_weight)


@njit(fastmath=SUMS)
def store_exp(row, peak, out):
    """out[k] = exp(row[k] − peak); returns their sum (in the row's dtype, as row_sum_exp)."""
    total = row.dtype.type(0.0)
    for k in range(row.shape[0]):
        value = exp_nonpositive(row[k] - peak)
        out[k] = value
        total += value
    return total


@njit(parallel=True, cache=True)
def aggregate_forward(logits, num_transforms, scores):
    """scores[b, i] = (1/M) Σ_j L[b·M + j, i·M + j]: view rows read in turn, each with stride M."""
    batch, classes = scores.shape
    for b in prange(batch):
        out = scores[b]
        out[:] = 0.0
        for j in range(num_transforms):
            row = logits[b * num_transforms + j]
            for i in range(classes):
                out[i] += row[i * num_transforms + j]
        for i in range(classes):
            out[i] /= num_transforms


@njit(parallel=True, cache=True)
def aggregate_backward(grad_scores, num_transforms, grad):
    """grad[b·M + j, i·M + j'] = grad_scores[b, i] / M where j' = j, else 0."""
    rows, columns = grad.shape
    for r in prange(rows):
        b, j = r // num_transforms, r % num_transforms
        row = grad[r]
        row[:] = 0.0
        for i in range(columns // num_transforms):
            row[i * num_transforms + j] = grad_scores[b, i] / num_transforms


@njit(fastmath=SUMS)
def kl_row_sums(s_row, t_row, scale, peak_s, peak_t):
    """(Σe^v, Σe^u, Σe^u·(u − v)) with u = t·scale − peak_t, v = s·scale − peak_s; float64 sums, as the
    KL of two close distributions is a small difference of O(1) terms."""
    total_s, total_t, weighted = 0.0, 0.0, 0.0
    for k in range(s_row.shape[0]):
        u = t_row[k] * scale - peak_t
        v = s_row[k] * scale - peak_s
        e_u = exp_nonpositive(u)
        total_s += exp_nonpositive(v)
        total_t += e_u
        weighted += e_u * (np.float64(u) - np.float64(v))
    return total_s, total_t, weighted


@njit(parallel=True, cache=True, fastmath=EXACT)
def kl_forward(student, teacher, inverse_temperature, row_kl, stats_student, stats_teacher):
    """row_kl[r] = Σ_k p_k (log p_k − log q_k), p = softmax(teacher/τ), q = softmax(student/τ).

    With u = teacher/τ − max, v = student/τ − max: log p = u − log Σe^u, log q = v − log Σe^v, so
    row_kl = Σ_k e^{u_k}(u_k − v_k) / Σe^u − log Σe^u + log Σe^v, one exp per element and side."""
    rows = student.shape[0]
    scale = student.dtype.type(inverse_temperature)
    for r in prange(rows):
        peak_s, peak_t = row_max(student[r]) * scale, row_max(teacher[r]) * scale
        total_s, total_t, weighted = kl_row_sums(student[r], teacher[r], scale, peak_s, peak_t)
        log_total_s, log_total_t = math.log(total_s), math.log(total_t)
        row_kl[r] = (weighted / total_t - log_total_t) + log_total_s
        stats_student[r, 0], stats_student[r, 1] = peak_s, log_total_s
        stats_teacher[r, 0], stats_teacher[r, 1] = peak_t, log_total_t


@njit(parallel=True, cache=True, fastmath=EXACT)
def kl_backward(student, teacher, inverse_temperature, stats_student, stats_teacher, row_grad, grad):
    """∂row_kl[r]/∂student[r, k] = (q_k − p_k)/τ, times row_grad[r]."""
    rows, columns = student.shape
    scale = student.dtype.type(inverse_temperature)
    for r in prange(rows):
        grad_scale = row_grad[r] * scale
        peak_s, log_total_s = stats_student[r, 0], stats_student[r, 1]
        peak_t, log_total_t = stats_teacher[r, 0], stats_teacher[r, 1]
        for k in range(columns):
            q = exp_nonpositive((student[r, k] * scale - peak_s) - log_total_s)
            p = exp_nonpositive((teacher[r, k] * scale - peak_t) - log_total_t)
            grad[r, k] = (q - p) * grad_scale


@njit(parallel=True, cache=True)
def expand_views(images, quarter_turns, channel_orders, scale, shift, out_hwc):
    """out_hwc[b·M + j, h, w, c] = t_j(x_b)[c, h, w] normalised; out_hwc is an [B·M, H, W, C] view
    of the output, whatever its memory format. RGB images take a loop without per-pixel branches: along
    an output row the rotated source moves by a fixed step, and the three channels are unrolled (1.3× the
    generic loop at 224², which stays for other channel counts)."""
    batch, height, width, channels = images.shape
    num_views = quarter_turns.shape[0]
    for row in prange(batch * num_views):
        b, j = row // num_views, row % num_views
        turns = quarter_turns[j]
        if channels == 3:
            c0, c1, c2 = channel_orders[j, 0], channel_orders[j, 1], channel_orders[j, 2]
            f0, f1, f2 = scale[c0], scale[c1], scale[c2]
            o0, o1, o2 = shift[c0], shift[c1], shift[c2]
            source, target = images[b], out_hwc[row]
            for h in range(height):
                sh, sw = rotated_source(turns, h, 0, height, width)
                next_h, next_w = rotated_source(turns, h, 1, height, width)
                step_h, step_w = next_h - sh, next_w - sw
                line = target[h]
                for w in range(width):
                    y, x = sh + w * step_h, sw + w * step_w
                    line[w, 0] = np.float32(source[y, x, c0]) * f0 + o0
                    line[w, 1] = np.float32(source[y, x, c1]) * f1 + o1
                    line[w, 2] = np.float32(source[y, x, c2]) * f2 + o2
            continue
        for h in range(height):
            for w in range(width):
                sh, sw = rotated_source(turns, h, w, height, width)
                for c in range(channels):
                    source_channel = channel_orders[j, c]
                    out_hwc[row, h, w, c] = (np.float32(images[b, sh, sw, source_channel]) * scale[source_channel]
                                             + shift[source_channel])


@njit(parallel=True, cache=True)
def gather_views(dataset, indices, offsets, flips, padding, quarter_turns, channel_orders, scale, shift, out_hwc):
    """kernels/cuda.py's gather_views on the CPU: the batch's views straight from the resident dataset (crop in the
    zero-padded image, mirror, view j's rotation and channel order, normalisation), each element written once."""
    rows, height, width, channels = out_hwc.shape
    num_views = quarter_turns.shape[0]
    for row in prange(rows):
        b, j = row // num_views, row % num_views
        image, turns = dataset[indices[b]], quarter_turns[j]
        top, left, flip = offsets[b, 0] - padding, offsets[b, 1] - padding, flips[b]
        for h in range(height):
            for w in range(width):
                sh, sw = rotated_source(turns, h, w, height, width)
                if flip:
                    sw = width - 1 - sw
                y, x = top + sh, left + sw
                inside = 0 <= y < height and 0 <= x < width
                for c in range(channels):
                    source = channel_orders[j, c]
                    value = np.float32(image[y, x, source]) if inside else np.float32(0.0)
                    out_hwc[row, h, w, c] = value * scale[source] + shift[source]
