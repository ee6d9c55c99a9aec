"""One optimisation step on one batch: forward, losses, backward, optimizer; each part a named phase."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from pipeline.batch import Batch
from pipeline import phases


@dataclass
class TrainStep:
    train_model: torch.nn.Module  # what the step calls: maybe DDP-wrapped and/or compiled
    model: torch.nn.Module  # the plain module: its parameters are clipped and averaged into the EMA
    method: object  # train.methods.Method, bound to the run's M and kernel backend
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    ema: torch.nn.Module | None  # train.optim.WeightEma
    autocast: Callable  # () → the step's autocast context
    grad_clip_norm: float = 0.0

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        losses, outputs = self.learn(batch.views, batch.labels)
        self.scheduler.step()
        self.method.after_update(self.model, outputs)  # momentum encoders, queues
        return losses

    def learn(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[dict, dict]:
        """Forward, losses, backward, optimizer and EMA on one batch: (losses, outputs). The part of a step that
        --cuda-graph captures (train/graph_step.py)."""
        with phases.phase("forward"), self.autocast():
            outputs = self.method.forward(self.train_model, views)
        with phases.phase("loss"), self.autocast():
            losses = self.method.losses(outputs, labels)
        self.update(losses["loss"])
        return losses, outputs

    def update(self, loss: torch.Tensor) -> None:
        """Backward, optimizer and EMA for the trained model's `loss` (the caller steps the schedule)."""
        with phases.phase("backward"):  # DDP's gradient all-reduce overlaps this phase
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        with phases.phase("optimizer"):
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)


class NonfiniteWatch:
    """The first step whose loss was not finite, kept on the loss's device: three small device operations per
    step and no host sync; `first_bad_step()` reads it (a sync) where the loop synchronises anyway."""

    def __init__(self, device: torch.device, step: int):
        self.steps = torch.full((), step, dtype=torch.int64, device=device)  # steps done, counted on the device
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor) -> None:
        self.steps += 1
        newly_bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(newly_bad, self.steps, self.first_bad))

    def first_bad_step(self, context) -> int | None:
        """The first non-finite step on any rank (a collective under torchrun: every rank calls it at the same
        point), or None."""
        first = self.first_bad.clone()
        if context.initialised and context.world_size > 1:
            first = torch.where(first < 0, torch.iinfo(torch.int64).max, first)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            first = torch.where(first == torch.iinfo(torch.int64).max, -1, first)
        value = int(first)
        return value if value >= 0 else None


class LossMeter:
    """Each loss part summed on the device between progress lines (no host sync per step), and the steps that
    reported it (MAXL's two passes report different parts)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last_means: dict[str, float] = {}  # the last progress line's

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        """Each part's mean since the last progress line (one host read per part)."""
        return {name: round(float(total) / self.counts[name], 5) for name, total in self.sums.items()}

    def take(self) -> dict[str, float]:
        """`means()`, then a new interval starts."""
        self.last_means = self.means()
        self.sums, self.counts = {}, {}
        return self.last_means
