"""Training-mode batch normalisation of bf16 channels_last activations on a CPU (Numba, parallel over row blocks).

Why written here: PyTorch's CPU kernel for bf16 channels_last input with fp32 parameters is slow on the AMX
machine (`python train/bench.py batchnorm`: 10.5 ms forward and 16.7 ms backward for [128, 64, 32, 32],
against 6.2 and 14.9 ms here), and a kernel of our own also fuses the ReLU and the shortcut's sum that follow
BN in a residual block, which no library offers for this layout on a CPU.

Layout: the activation as its rows [R = N·H·W, C] (a channels_last tensor's own memory), bf16 values as
their int16 bits: bf16 → fp32 is a 16-bit shift, fp32 → bf16 rounds to nearest even (NaN stays NaN).
Sums: float32 within blocks of BLOCK rows, the blocks combined in float64; the statistics sum x − x[0]
(each channel shifted by its first value, against cancellation when |mean| ≫ std).

Forward:  y = γ (x − μ)/σ + β,  μ, σ² over the rows (σ² biased, ε inside the root); optionally fused with
          what follows BN in a residual block: a = max(y + r, 0) (the residual r optional), one rounding.
Backward: with g = dL/dy (after ReLU: g = dL/da · [a > 0], which is also dL/dr), Sg = Σ g, Sgx = Σ g (x − μ):
          dL/dx = (γ/σ) (g − Sg/R − (x − μ) Sgx/(R σ²)),  dL/dγ = Sgx/σ,  dL/dβ = Sg.
An optional array that is absent is passed with zero rows (one compiled signature per kernel).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import EXACT, SUMS, _bits_of_float32, _float32_from_bits

BLOCK = 256  # rows per block: a block's float32 partial sums stay exact to about 1e-7 relative


@njit(inline="always")
def bf16_value(bits):
    return _float32_from_bits(np.int32(bits) << 16)


@njit(inline="always")
def bf16_bits(value):
    """Round to nearest even; NaN → the canonical quiet NaN."""
    if value != value:
        return np.int16(0x7FC0)
    word = np.int64(_bits_of_float32(np.float32(value))) & 0xFFFFFFFF
    return np.int16(((word + 0x7FFF + ((word >> 16) & 1)) >> 16) & 0xFFFF)


@njit(parallel=True, cache=True, fastmath=SUMS)
def paired_sums(a, a_shift, b, b_shift, mask):
    """(Σ (a − a_shift), Σ (a − a_shift)(b − b_shift)) per channel over the rows, in float64, a counted only
    where mask > 0 when the mask has rows (a ReLU's output). The batch's statistics are
    paired_sums(x, x[0], x, x[0], none); the gradient's, paired_sums(g, 0, x, μ, ReLU output or none)."""
    rows, channels = a.shape
    blocks = (rows + BLOCK - 1) // BLOCK
    masked = mask.shape[0] > 0
    first = np.zeros((blocks, channels), np.float64)
    second = np.zeros((blocks, channels), np.float64)
    for block in prange(blocks):
        sum1 = np.zeros(channels, np.float32)
        sum2 = np.zeros(channels, np.float32)
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            for c in range(channels):
                value = bf16_value(a[r, c]) - a_shift[c]
                if masked and mask[r, c] <= 0:  # bf16 bits ≤ 0 as int16: a value ≤ 0 (or −0, or NaN < 0)
                    value = np.float32(0.0)
                sum1[c] += value
                sum2[c] += value * (bf16_value(b[r, c]) - b_shift[c])
        for c in range(channels):
            first[block, c] = sum1[c]
            second[block, c] = sum2[c]
    return first.sum(axis=0), second.sum(axis=0)


@njit(cache=True)
def first_row(x):
    """x[0] per channel as float32 (the statistics' shift)."""
    shift = np.empty(x.shape[1], np.float32)
    for c in range(x.shape[1]):
        shift[c] = bf16_value(x[0, c])
    return shift


@njit(parallel=True, cache=True, fastmath=EXACT)
def scale_shift(x, scale, offset, residual, relu, out):
    """out = x · scale + offset per channel, plus the residual when it has rows, then max(·, 0) when `relu`
    (bf16 bits in and out)."""
    rows, channels = x.shape
    blocks = (rows + BLOCK - 1) // BLOCK
    add = residual.shape[0] > 0
    for block in prange(blocks):
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            for c in range(channels):
                value = bf16_value(x[r, c]) * scale[c] + offset[c]
                if add:
                    value += bf16_value(residual[r, c])
                if relu and value < 0:
                    value = np.float32(0.0)
                out[r, c] = bf16_bits(value)


@njit(parallel=True, cache=True, fastmath=EXACT)
def input_gradient(grad, x, mean, scale, grad_mean, slope, mask, out, masked_grad):
    """out = scale · (g − grad_mean − (x − μ) · slope) per channel, g zeroed where mask ≤ 0 when the mask has
    rows; that g is also written to masked_grad when it has rows (dL/dr). bf16 bits in and out."""
    rows, channels = x.shape
    blocks = (rows + BLOCK - 1) // BLOCK
    masked = mask.shape[0] > 0
    keep = masked_grad.shape[0] > 0
    for block in prange(blocks):
        for r in range(block * BLOCK, min(rows, (block + 1) * BLOCK)):
            for c in range(channels):
                bits = grad[r, c]
                if masked and mask[r, c] <= 0:
                    bits = np.int16(0)
                if keep:
                    masked_grad[r, c] = bits
                centred = bf16_value(x[r, c]) - mean[c]
                out[r, c] = bf16_bits(scale[c] * (bf16_value(bits) - grad_mean[c] - centred * slope[c]))
