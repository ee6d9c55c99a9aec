"""CPU kernels (Numba, parallel over rows). One pass over each row per direction; float64 accumulators.

Equations (methods.md): L_SLA, SLA+AG, and the τ²·KL distillation term; expand_views builds
the M views of the interleaved layout.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .indexing import rotated_source


@njit(parallel=True, cache=True)
def joint_ce_forward(logits, labels, num_transforms, row_loss, row_stats):
    """row_loss[r] = logsumexp(L[r]) − L[r, y[b]·M + j]. row_stats[r] = (max, log Σ exp(L − max)): kept
    apart, since one float32 logsumexp of logits near 1e4 would lose the softmax's precision."""
    rows, columns = logits.shape
    for r in prange(rows):
        target = labels[r // num_transforms] * num_transforms + r % num_transforms
        peak = -np.inf
        for k in range(columns):
            peak = max(peak, np.float64(logits[r, k]))
        total = 0.0
        for k in range(columns):
            total += math.exp(np.float64(logits[r, k]) - peak)
        log_total = math.log(total)
        row_stats[r, 0] = peak
        row_stats[r, 1] = log_total
        row_loss[r] = (peak - logits[r, target]) + log_total if 0 <= target < columns else np.nan


@njit(parallel=True, cache=True)
def joint_ce_backward(logits, labels, num_transforms, row_stats, row_grad, grad):
    """grad[r, k] = (softmax(L[r])_k − [k = target]) · row_grad[r], written once."""
    rows, columns = logits.shape
    for r in prange(rows):
        target = labels[r // num_transforms] * num_transforms + r % num_transforms
        scale = np.float64(row_grad[r])
        peak, log_total = np.float64(row_stats[r, 0]), np.float64(row_stats[r, 1])
        for k in range(columns):
            grad[r, k] = math.exp((np.float64(logits[r, k]) - peak) - log_total) * scale
        if 0 <= target < columns:
            grad[r, target] = grad[r, target] - scale


@njit(parallel=True, cache=True)
def aggregate_forward(logits, num_transforms, scores):
    """scores[b, i] = (1/M) Σ_j L[b·M + j, i·M + j]."""
    batch, classes = scores.shape
    for b in prange(batch):
        for i in range(classes):
            total = 0.0
            for j in range(num_transforms):
                total += logits[b * num_transforms + j, i * num_transforms + j]
            scores[b, i] = total / num_transforms


@njit(parallel=True, cache=True)
def aggregate_backward(grad_scores, num_transforms, grad):
    """grad[b·M + j, i·M + j'] = grad_scores[b, i] / M where j' = j, else 0."""
    rows, columns = grad.shape
    for r in prange(rows):
        b, j = r // num_transforms, r % num_transforms
        for k in range(columns):
            grad[r, k] = grad_scores[b, k // num_transforms] / num_transforms if k % num_transforms == j else 0.0


@njit(parallel=True, cache=True)
def kl_forward(student, teacher, inverse_temperature, row_kl, stats_student, stats_teacher):
    """row_kl[r] = Σ_k p_k (log p_k − log q_k), p = softmax(teacher/τ), q = softmax(student/τ)."""
    rows, columns = student.shape
    for r in prange(rows):
        peak_s, peak_t = -np.inf, -np.inf
        for k in range(columns):
            peak_s = max(peak_s, student[r, k] * inverse_temperature)
            peak_t = max(peak_t, teacher[r, k] * inverse_temperature)
        total_s, total_t = 0.0, 0.0
        for k in range(columns):
            total_s += math.exp(student[r, k] * inverse_temperature - peak_s)
            total_t += math.exp(teacher[r, k] * inverse_temperature - peak_t)
        log_total_s, log_total_t = math.log(total_s), math.log(total_t)
        kl = 0.0
        for k in range(columns):
            log_p = (teacher[r, k] * inverse_temperature - peak_t) - log_total_t
            log_q = (student[r, k] * inverse_temperature - peak_s) - log_total_s
            kl += math.exp(log_p) * (log_p - log_q)
        row_kl[r] = kl
        stats_student[r, 0], stats_student[r, 1] = peak_s, log_total_s
        stats_teacher[r, 0], stats_teacher[r, 1] = peak_t, log_total_t


@njit(parallel=True, cache=True)
def kl_backward(student, teacher, inverse_temperature, stats_student, stats_teacher, row_grad, grad):
    """∂row_kl[r]/∂student[r, k] = (q_k − p_k)/τ, times row_grad[r]."""
    rows, columns = student.shape
    for r in prange(rows):
        scale = np.float64(row_grad[r]) * inverse_temperature
        for k in range(columns):
            q = math.exp((student[r, k] * inverse_temperature - stats_student[r, 0]) - stats_student[r, 1])
            p = math.exp((teacher[r, k] * inverse_temperature - stats_teacher[r, 0]) - stats_teacher[r, 1])
            grad[r, k] = (q - p) * scale


@njit(parallel=True, cache=True)
def expand_views(images, quarter_turns, channel_orders, scale, shift, out_hwc):
    """out_hwc[b·M + j, h, w, c] = t_j(x_b)[c, h, w] normalised; out_hwc is an [B·M, H, W, C] view
    of the output, whatever its memory format."""
    batch, height, width, channels = images.shape
    num_views = quarter_turns.shape[0]
    for row in prange(batch * num_views):
        b, j = row // num_views, row % num_views
        turns = quarter_turns[j]
        for h in range(height):
            for w in range(width):
                sh, sw = rotated_source(turns, h, w, height, width)
                for c in range(channels):
                    source = channel_orders[j, c]
                    out_hwc[row, h, w, c] = np.float32(images[b, sh, sw, source]) * scale[source] + shift[source]
