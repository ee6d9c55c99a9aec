"""Two reasons a run stops before its end, each with a checkpoint it can continue from and a distinct exit status:

- a preemption signal: SIGTERM (what SLURM, Kubernetes and torchrun send before they kill a job) or SIGUSR1 (what
  SLURM sends ahead of time with `--signal`). The handler only records it; the loop finishes its step, writes
  last.pt and exits with EXIT_PREEMPTED, and `--resume auto` continues at the next step.
- a non-finite loss: remembered on the device each step (train/step.py's NonfiniteWatch, no host sync) and read
  where the loop synchronises anyway (the progress line, evaluation, checkpoints); the run stops with
  EXIT_DIVERGED and keeps its last finite checkpoints.
"""
from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, to be continued
EXIT_DIVERGED = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
RAISE_SIGNAL_AT = "SLA_TRAINER_RAISE_SIGNAL_AT"  # fault injection for tests: "RANK:STEP:SIGNAL"


class PreemptionSignals:
    """Records SIGTERM and SIGUSR1 instead of dying; `poll()` after every step says whether the run stops now.

    One process stops after the step the signal arrived in. Under torchrun every rank must stop after the same
    step (a rank that leaves early would hang the others' next all-reduce), and ranks see a signal at different
    steps, or only one of them sees it. So each step starts an asynchronous all-reduce (MAX) of this rank's
    signal number on a gloo group of its own, in host memory, and reads the one the previous step started,
    which has long finished: every rank reads the same value after the same step, and no step waits for the
    device or for the other ranks beyond what DDP's gradient all-reduce already does. A second signal while the
    checkpoint is written is recorded and ignored (checkpoints are written atomically either way)."""

    def __init__(self, context):
        self.received = 0  # the first signal's number, 0 for none
        self.previous_handlers = {}
        self.group = None
        self.pending = None  # (work, tensor) of the all-reduce the last poll started
        self.raise_at = self._injected_fault(context.rank)
        try:
            for signum in STOP_SIGNALS:
                self.previous_handlers[signum] = signal.signal(signum, self._record)
        except ValueError:  # not the main thread (signals reach only the main thread): leave the defaults
            self.previous_handlers = {}
        if context.initialised and context.world_size > 1:
            self.group = dist.new_group(backend="gloo")

    @staticmethod
    def _injected_fault(rank: int) -> tuple[int, int] | None:
        text = os.environ.get(RAISE_SIGNAL_AT, "")
        if not text:
            return None
        at_rank, at_step, name = text.split(":")
        return (int(at_step), getattr(signal, name)) if int(at_rank) == rank else None

    def _record(self, signum, frame) -> None:
        if not self.received:
            self.received = signum

    def poll(self, step: int) -> str | None:
        """Call once after every step, on every rank: the name of the signal the run stops for, or None."""
        if self.raise_at is not None and step == self.raise_at[0]:
            os.kill(os.getpid(), self.raise_at[1])
        if self.group is None:
            return signal.Signals(self.received).name if self.received else None
        agreed = 0
        if self.pending is not None:
            work, tensor = self.pending
            work.wait()
            agreed = int(tensor[0])
            self.pending = None
        if agreed:
            return signal.Signals(agreed).name
        tensor = torch.tensor([self.received], dtype=torch.int32)
        self.pending = (dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group, async_op=True), tensor)
        return None

    def close(self) -> None:
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.previous_handlers = {}
        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None


def weights_are_finite(model: torch.nn.Module) -> bool:
    """Every parameter and buffer finite (one host sync): a checkpoint is written only when this holds."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
