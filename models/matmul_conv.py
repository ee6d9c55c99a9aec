"""A convolution's passes as matrix products, for bf16 training on a CPU where oneDNN's kernels are slow.

oneDNN's bf16 convolutions lose much of their speed on small feature maps: with AMX, for 512 channels at
4×4 the forward and the input gradient ran at about a third of the rate of the same arithmetic at 64
channels on 32×32, and the weight gradient at a fifth (`python train/bench.py conv`). The same arithmetic as
matrix products, which the matmul units run at full speed, without the products that would multiply the
zero padding (on a 2×2 map a 3×3 kernel reads padding with 5 of its 9 taps):
- weight gradient: per kernel tap, (grad_out)ᵀ · (input rows that tap reads), an [O × rows] by [rows × C]
  product over the outputs whose input for that tap is inside the image;
- forward: per block of outputs that read the same taps (`tap_segments`), the unfolded input
  [rows × taps·C] by those taps' weights [taps·C × O];
- input gradient at stride 1: the same forward on grad_out with the flipped, transposed kernel.
Written here because no library offers this choice of algorithm per layer; models/conv_ways.py picks, per
layer and CPU, which passes run this way, and models/cpu_conv2d.py is the layer that runs them.
"""
from __future__ import annotations

import torch

def output_size(size: tuple[int, int], kernel, stride, padding) -> tuple[int, int]:
    return tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, kernel, stride, padding))


def output_range(in_size: int, out_size: int, tap: int, stride: int, padding: int) -> tuple[int, int]:
    """The outputs [y0, y1) for which tap t reads inside the input (y1 <= y0: none)."""
    first = max(0, -(-(padding - tap) // stride))
    last = min(out_size - 1, (in_size - 1 + padding - tap) // stride)
    return first, last + 1


def tap_segments(in_size: int, out_size: int, kernel: int, stride: int,
                 padding: int) -> list[tuple[int, int, int, int]]:
    """Along one dimension: the output positions cut into runs [a, b) that read the same kernel taps [t0, t1),
    the taps whose input index y·stride + t − padding falls inside the input for every y of the run. A tap
    that would read the zero padding is left out, so no product below multiplies padding (at 2×2 outputs of
    a 3×3 kernel that is 5 of every 9 products; at 4×4, 4 of 9 on the border)."""
    ranges = [output_range(in_size, out_size, tap, stride, padding) for tap in range(kernel)]
    segments: list[tuple[int, int, int, int]] = []
    for y in range(out_size):
        valid = [tap for tap, (first, end) in enumerate(ranges) if first <= y < end]  # consecutive taps
        taps = (valid[0], valid[-1] + 1) if valid else (0, 0)
        if segments and segments[-1][2:] == taps:
            segments[-1] = (segments[-1][0], y + 1, *taps)
        else:
            segments.append((y, y + 1, *taps))
    return segments


def input_rows(rows: torch.Tensor, y: tuple[int, int], x: tuple[int, int], tap: tuple[int, int], stride,
               padding) -> torch.Tensor:
    """The input positions (of rows, as N, H, W, C) that kernel tap (i, j) multiplies for outputs y0 <= y < y1,
    x0 <= x < x1; all inside the input when the tap is valid for those outputs (tap_segments)."""
    (y0, y1), (x0, x1), (i, j), (sh, sw), (ph, pw) = y, x, tap, stride, padding
    return rows[:, y0 * sh + i - ph:(y1 - 1) * sh + i - ph + 1:sh, x0 * sw + j - pw:(x1 - 1) * sw + j - pw + 1:sw]


def weight_gradient(grad_out: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW[o, c, i, j] = Σ_{n, y, x} grad_out[n, o, y, x] · x[n, c, y·s_h + i − p_h, x·s_w + j − p_w], the sum
    over the outputs whose input for tap (i, j) is inside the image (the rest multiply padding, zero): per tap
    an [O × rows] by [rows × C] product."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    c, h, w = x.shape[1:]
    out_channels, out_h, out_w = grad_out.shape[1:]
    rows_in, rows_out = x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)  # N, H, W, C and N, H', W', O
    ranges_y = [output_range(h, out_h, i, sh, ph) for i in range(kh)]
    ranges_x = [output_range(w, out_w, j, sw, pw) for j in range(kw)]
    grad = torch.zeros(kh, kw, out_channels, c, dtype=x.dtype, device=x.device)
    grad_rows = {}  # the outputs' gradient for one (y range, x range), as O × rows; taps share them
    for i, (y0, y1) in enumerate(ranges_y):
        for j, (x0, x1) in enumerate(ranges_x):
            if y1 <= y0 or x1 <= x0:
                continue  # this tap only ever multiplies padding
            if (y0, y1, x0, x1) not in grad_rows:
                grad_rows[y0, y1, x0, x1] = rows_out[:, y0:y1, x0:x1].reshape(-1, out_channels).t()
            inputs = input_rows(rows_in, (y0, y1), (x0, x1), (i, j), stride, padding)
            torch.mm(grad_rows[y0, y1, x0, x1], inputs.reshape(-1, c), out=grad[i, j])
    return grad.permute(2, 3, 0, 1)  # O, C, kh, kw


def matmul_convolution(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                       padding: tuple[int, int]) -> torch.Tensor:
    """conv2d(x, weight) as products of the unfolded input by the weight, one per block of outputs that read
    the same taps (tap_segments): [N·rows × taps·C] by [taps·C × O], padding never multiplied. Without
    padding that is one product over all outputs. The result is channels_last."""
    n, c, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = output_size((h, w), (kh, kw), stride, padding)
    rows_in = x.permute(0, 2, 3, 1)  # N, H, W, C
    taps = weight.permute(2, 3, 1, 0)  # kh, kw, C, O
    dtype = torch.promote_types(x.dtype, weight.dtype)

    def block(ys, xs) -> torch.Tensor:
        """The outputs y0 <= y < y1, x0 <= x < x1, as N, rows, columns, O."""
        (y0, y1, i0, i1), (x0, x1, j0, j1) = ys, xs
        count = (i1 - i0) * (j1 - j0)
        if count == 0:  # every tap of these outputs reads padding
            return torch.zeros(n, y1 - y0, x1 - x0, out_channels, dtype=dtype, device=x.device)
        unfolded = torch.empty(n, y1 - y0, x1 - x0, count, c, dtype=x.dtype, device=x.device)
        for i in range(i0, i1):
            for j in range(j0, j1):
                unfolded[:, :, :, (i - i0) * (j1 - j0) + j - j0] = input_rows(rows_in, (y0, y1), (x0, x1), (i, j),
                                                                              stride, padding)
        product = unfolded.view(-1, count * c) @ taps[i0:i1, j0:j1].reshape(count * c, out_channels)
        return product.view(n, y1 - y0, x1 - x0, out_channels)

    blocks = [(ys, xs) for ys in tap_segments(h, out_h, kh, stride[0], padding[0])
              for xs in tap_segments(w, out_w, kw, stride[1], padding[1])]
    if len(blocks) == 1:  # no padding read: the product is the output
        return block(*blocks[0]).permute(0, 3, 1, 2)
    out = torch.empty(n, out_h, out_w, out_channels, dtype=dtype, device=x.device)
    for ys, xs in blocks:
        out[:, ys[0]:ys[1], xs[0]:xs[1]] = block(ys, xs)
    return out.permute(0, 3, 1, 2)


def flipped_input_gradient_applies(kernel, stride, padding) -> bool:
    """dL/dx of a stride-1 convolution is grad_out convolved with the flipped, transposed kernel at padding
    k − 1 − p, which must not be negative."""
    return tuple(stride) == (1, 1) and all(p <= k - 1 for p, k in zip(padding, kernel))
