"""Named phases of a training step, for the profiler: loaders mark `copy` and `expand`, the
train loop marks the rest. A no-op unless a phase clock is active (train/profiling.py)."""
from __future__ import annotations

from contextlib import nullcontext

_active_clock = None


def set_clock(clock) -> None:
    global _active_clock
    _active_clock = clock


def phase(name: str):
    return _active_clock.phase(name) if _active_clock is not None else nullcontext()

