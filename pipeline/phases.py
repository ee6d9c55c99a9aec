"""Named phases of a training step, for the profiler: loaders mark `copy` and `expand`, the
train loop marks the rest, each as `with phases.phase(name):`, looked up at each use. Outside a
profile window `phase` is `contextlib.nullcontext` itself, so a mark runs no project code; the
profiler (train/profiling.py) points it at its clock for the window."""
from __future__ import annotations

from contextlib import nullcontext

phase = nullcontext


def set_clock(clock) -> None:
    global phase
    phase = nullcontext if clock is None else clock.phase
