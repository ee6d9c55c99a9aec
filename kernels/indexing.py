"""Index maps shared by the CPU and CUDA kernels (`register_jitable`: callable from both targets)."""
from numba.extending import register_jitable


@register_jitable
def rotated_source(turns, h, w, height, width):
    """Source pixel of output (h, w) after rot90 by `turns` counter-clockwise quarter turns over (H, W),
    as torch.rot90(x, turns, dims=(-2, -1))."""
    if turns == 0:
        return h, w
    if turns == 1:
        return w, width - 1 - h
    if turns == 2:
        return height - 1 - h, width - 1 - w
    return height - 1 - w, h
