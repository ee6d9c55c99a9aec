"""Honest throughput: seconds spent in training steps only. Evaluation and checkpoint writes are
paused out, the first warm-up steps of each process (allocator, kernel selection, Numba and oneDNN
compilation) are left out of the run's figure, and on a GPU every interval ends in a synchronise, so
queued work is counted where it ran."""
from __future__ import annotations

import time

import torch

WARMUP_STEPS = 5  # left out of the run's images/s (each process warms up again, also after --resume)


class TrainingClock:
    def __init__(self, device: torch.device, warmup_steps: int = WARMUP_STEPS):
        self.device, self.warmup_steps = device, warmup_steps
        self.steps = 0  # steps this process has run
        self.all_seconds = 0.0  # every training second, warm-up included
        self.timed_seconds = 0.0  # training seconds after the warm-up steps
        self.interval_steps, self.interval_seconds = 0, 0.0
        self.data_seconds = 0.0  # the host's wait for batches since the last progress line (the loop adds to it)
        self.started = time.perf_counter()
        self._mark: float | None = None

    @property
    def wall_seconds(self) -> float:
        """Since the clock was made: training, evaluation and checkpoints alike."""
        return time.perf_counter() - self.started

    def take_data_seconds(self) -> float:
        """The data wait since the last call; a new interval starts."""
        seconds, self.data_seconds = self.data_seconds, 0.0
        return seconds

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _account(self) -> None:
        now = time.perf_counter()
        elapsed = now - self._mark
        self.all_seconds += elapsed
        self.interval_seconds += elapsed
        if self._timed:
            self.timed_seconds += elapsed
        self._mark, self._timed = now, self.steps >= self.warmup_steps

    def resume(self) -> None:
        """Training steps follow."""
        self._sync()
        self._mark, self._timed = time.perf_counter(), self.steps >= self.warmup_steps

    def pause(self) -> None:
        """Something that is not training follows (evaluation, a checkpoint write)."""
        if self._mark is not None:
            self._sync()
            self._account()
            self._mark = None

    def step_done(self) -> None:
        self.steps += 1
        self.interval_steps += 1
        if self.steps == self.warmup_steps:  # the timed part starts here
            self._sync()
            self._account()

    def interval(self) -> tuple[int, float]:
        """(steps, seconds) since the last call, synchronised; then a new interval starts."""
        if self._mark is not None:
            self._sync()
            self._account()
        measured = self.interval_steps, self.interval_seconds
        self.interval_steps, self.interval_seconds = 0, 0.0
        return measured

    def images_per_second(self, images_per_step: int) -> tuple[float, str]:
        """The run's training throughput and what it counts."""
        timed_steps = self.steps - self.warmup_steps
        if timed_steps > 0 and self.timed_seconds > 0:
            return (timed_steps * images_per_step / self.timed_seconds,
                    f"training steps only: {timed_steps} steps after {self.warmup_steps} warm-up steps; "
                    "evaluation and checkpoint writes excluded")
        return (self.steps * images_per_step / max(self.all_seconds, 1e-9),
                f"training steps only: all {self.steps} steps (fewer than the {self.warmup_steps} warm-up steps "
                "to leave out); evaluation and checkpoint writes excluded")
