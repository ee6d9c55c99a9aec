"""Where a step's time goes: a phase clock (host timers, NVTX ranges on a GPU) over a window of
steps, a torch.profiler Chrome trace of the same window, and a breakdown table with a verdict.

Inside the window each phase boundary synchronises the GPU, so every phase is charged with the
device work it launched; that perturbs the overlap a little and is why it is a window.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline import phases

PHASES = ("data", "copy", "expand", "teacher", "forward", "loss", "backward", "optimizer",
          "meta")  # teacher: HSAKD students; meta: MAXL's generator step (look-ahead and its gradient)
LOADER_PHASES = ("data", "copy", "expand")  # "data" is waiting for the loader beyond its copy and expansion


def parse_window(text: str) -> tuple[int, int]:
    """"START:STEPS" → (first profiled step, number of steps); "" → (0, 0), no profiling."""
    if not text:
        return 0, 0
    try:
        start, steps = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"--profile takes START:STEPS (e.g. 20:10), got {text!r}") from None
    if start < 0 or steps < 1:
        raise ValueError(f"--profile {text}: START must be ≥ 0 and STEPS ≥ 1")
    return start, steps


class PhaseClock:
    """Exclusive time per phase: a phase nested in another is subtracted from its parent."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals = {name: 0.0 for name in PHASES}
        self.stack: list[list] = []  # [name, start, child time]
        self.steps, self.step_time = 0, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.nvtx.range_push(name)
        self.stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            self._sync()
            entry = self.stack.pop()
            elapsed = time.perf_counter() - entry[1]
            self.totals[name] = self.totals.get(name, 0.0) + elapsed - entry[2]
            if self.stack:
                self.stack[-1][2] += elapsed
            if self.device.type == "cuda":
                torch.cuda.nvtx.range_pop()

    def begin_step(self) -> None:
        self._sync()
        self.step_start = time.perf_counter()

    def end_step(self) -> None:
        self._sync()
        self.step_time += time.perf_counter() - self.step_start
        self.steps += 1


class StepProfiler:
    """Profiles steps [start, start + steps) of a run (one rank's view); `phase(name)` costs nothing
    outside the window. A step that never ends (the epoch ran out) is simply not counted."""

    def __init__(self, window: str, device: torch.device, run_dir: Path, rank: int = 0):
        self.start, self.count = parse_window(window)
        self.device, self.run_dir, self.enabled = device, run_dir, self.count > 0
        self.trace_name = "trace.json" if rank == 0 else f"trace-rank{rank}.json"
        self.clock: PhaseClock | None = None
        self.torch_profiler = None
        self.report: dict | None = None

    def begin_step(self, step_index: int) -> None:
        """`step_index` counts this run's steps from 0; the window opens at its first step."""
        if self.enabled and step_index == self.start and self.clock is None and self.report is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.cudart().cudaProfilerStart()  # for nsys --capture-range=cudaProfilerApi
            self.torch_profiler = torch.profiler.profile(activities=activities, record_shapes=False)
            self.torch_profiler.__enter__()
            self.clock = PhaseClock(self.device)
            phases.set_clock(self.clock)
            self.window_start = time.perf_counter()
        if self.clock is not None:
            self.clock.begin_step()

    def end_step(self, step_index: int) -> dict | None:
        """Closes the step; after the window's last one, returns the breakdown (else None)."""
        if self.clock is None:
            return None
        self.clock.end_step()
        if step_index + 1 < self.start + self.count:
            return None
        phases.set_clock(None)
        wall = time.perf_counter() - self.window_start
        self.torch_profiler.__exit__(None, None, None)
        if self.device.type == "cuda":
            torch.cuda.cudart().cudaProfilerStop()
        trace = self.run_dir / self.trace_name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.torch_profiler.export_chrome_trace(str(trace))
        self.report = breakdown(self.clock, device_busy_seconds(self.torch_profiler, self.device), wall)
        self.report["trace"] = str(trace)
        self.clock = None
        return self.report


def device_busy_seconds(profiler, device: torch.device) -> float | None:
    """Seconds in which at least one kernel ran on the device: the union of the device events' intervals. Only
    device events count: a CPU op's self_device_time_total repeats the time of the kernels it launched, and
    kernels that overlap on two streams are busy time once."""
    if device.type != "cuda":
        return None
    kernels = [(event.time_range.start, event.time_range.end) for event in profiler.events()
               if event.device_type == torch.autograd.DeviceType.CUDA]
    return union_length(kernels) / 1e6


def union_length(intervals: list[tuple[float, float]]) -> float:
    """The length covered by the union of [start, end) intervals."""
    covered, reach = 0.0, -float("inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def breakdown(clock: PhaseClock, device_busy: float | None, wall: float) -> dict:
    step_time = clock.step_time
    shares = {name: clock.totals[name] / step_time if step_time else 0.0 for name in PHASES}
    report = {"steps": clock.steps, "step_time_s": step_time, "mean_step_ms": 1e3 * step_time / max(clock.steps, 1),
              "phase_s": {name: clock.totals[name] for name in PHASES}, "phase_share": shares,
              "phases_sum_s": sum(clock.totals[name] for name in PHASES),
              "device_busy_share": device_busy / wall if device_busy is not None and wall else None}
    report["verdict"] = verdict(shares, report["device_busy_share"])
    return report


def verdict(shares: dict[str, float], device_busy_share: float | None) -> str:
    loader = sum(shares[name] for name in LOADER_PHASES)
    compute = sum(shares[name] for name in ("teacher", "forward", "loss", "backward", "meta"))
    if shares["data"] >= 0.3:
        text = f"loader-bound: {100 * shares['data']:.0f}% of step time waiting for data"
    elif loader >= 0.4:
        text = f"input-bound: {100 * loader:.0f}% of step time in data, copy and view expansion"
    elif shares["optimizer"] >= 0.3:
        text = f"optimizer-bound: {100 * shares['optimizer']:.0f}% of step time in the optimizer step"
    else:
        text = f"compute-bound: {100 * compute:.0f}% of step time in forward, loss and backward"
        if shares["teacher"] > 0:
            text += f" ({100 * shares['teacher']:.0f}% in the teacher's forward)"
    if device_busy_share is not None:
        text += f"; the GPU was busy {100 * device_busy_share:.0f}% of the window"
    return text


def breakdown_table(report: dict) -> str:
    lines = [f"profile: {report['steps']} steps, {report['mean_step_ms']:.2f} ms per step", f"{'phase':<11}{'ms/step':>9}{'share':>8}"]
    steps = max(report["steps"], 1)
    for name in PHASES:
        lines.append(f"{name:<11}{1e3 * report['phase_s'][name] / steps:>9.2f}{100 * report['phase_share'][name]:>7.1f}%")
    accounted = report["phases_sum_s"] / report["step_time_s"] if report["step_time_s"] else 0.0
    lines.append(f"{'(sum)':<11}{1e3 * report['phases_sum_s'] / steps:>9.2f}{100 * accounted:>7.1f}%")
    if report["device_busy_share"] is not None:
        lines.append(f"GPU busy {100 * report['device_busy_share']:.1f}% of the window")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)
