"""Whether the process keeps the memory it frees, for training on a CPU.

glibc's malloc serves blocks over its mmap threshold (dynamic, at most 32 MB) with their own mmap, unmapped
at free, and gives the heap's free top back to the system past its trim threshold. A CPU training step
allocates and frees the same large activations, gradients and unfolded inputs every step, so each of them
is page-faulted and zeroed by the kernel anew (`python train/bench.py step --method simclr --paths
trainer,trainer_stock_malloc,paper` prints each path's page faults per step; BENCHMARKS.md has the figures).
Keeping it means: no mmap for allocations (they come from the heap) and no trimming of the heap's top at
free. The process's resident memory then stays at its peak, which a training loop reaches again every step.
Written here (two mallopt calls) because the usual remedy, tcmalloc or jemalloc through LD_PRELOAD, needs a
system library and a launcher change; the setting can be undone (`return_freed_memory`), which the
benchmarks use to give the reference path glibc's defaults.
"""
from __future__ import annotations

import ctypes
import functools
import platform

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest means never trim
# glibc's defaults as a long-running process reaches them: its dynamic rule raises the mmap threshold to the
# largest mmapped block freed so far, up to 32 MB, and the trim threshold to twice that. A mallopt call turns
# the rule off for good, so return_freed_memory sets where it ends.
DEFAULT_MMAP_MAX = 65536
SETTLED_MMAP_THRESHOLD = 32 * 2**20
SETTLED_TRIM_THRESHOLD = 2 * SETTLED_MMAP_THRESHOLD


@functools.cache
def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")  # glibc's soname on x86-64 and AArch64


def retain_freed_memory() -> bool:
    """Freed memory stays in the process for the next allocation. False where the C library is not glibc
    (nothing changed)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD))


def return_freed_memory() -> bool:
    """glibc's default behaviour again, at the thresholds its dynamic rule settles on in a training process
    (the benchmarks' reference path; in a one-off check a fresh process of it page-faulted as much or more),
    and what the heap holds free now goes back to the system."""
    libc = _glibc()
    if libc is None:
        return False
    restored = all(libc.mallopt(parameter, value) for parameter, value in (
        (M_MMAP_MAX, DEFAULT_MMAP_MAX), (M_MMAP_THRESHOLD, SETTLED_MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)))
    libc.malloc_trim(0)
    return restored
