"""`--cuda-graph`: the training step captured once as a CUDA graph and replayed for every batch.

A small network's step is a few hundred short kernels, each paying the host's launch cost; a replay pays it
once. What is captured is `TrainStep.learn`: forward, losses (the eager composite or the Numba kernels, launched
on the capturing stream), backward, optimizer and EMA. Each batch is copied into static input buffers, and the
losses and outputs come back in static tensors that the next replay overwrites (the loop sums copies of the
losses before then). The learning rate is a device tensor that the schedule fills between replays, one small
launch, so the captured optimizer reads each step's rate. A method's after-update (a momentum encoder's EMA with
its scheduled coefficient, a queue and its pointer) runs eagerly after each replay on the static outputs, in
place, so the next replay reads the updated encoder and queue. A batch of another shape runs eagerly.
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.batch import Batch
from train.methods.base import Method
from train.step import TrainStep

GRAPH_SETTINGS = ("auto", "on", "off")
WARMUP_STEPS = 3  # eager steps before the capture: the optimizer's state and cuDNN's choices exist by then
CAPTURABLE_OPTIMIZERS = ("sgd", "adamw", "adam")  # torch's fused kernels, which take a device learning rate


def graph_refusal(config, method: Method, step, device: torch.device, world_size: int, scaler) -> str | None:
    """Why this run's step (what `method.make_step` made) cannot be captured, or None where it can."""
    if device.type != "cuda":
        return f"no CUDA device (the run is on {device.type})"
    if not isinstance(step, TrainStep):
        return f"{method.name} runs its own step (MAXL's second-order meta step has host-side passes)"
    if type(method).epoch_batches is not Method.epoch_batches:
        return f"{method.name}'s step depends on the epoch (SwAV's prototypes are frozen at first)"
    if world_size > 1:
        return "DDP's gradient buckets are not captured here (one process per GPU runs eagerly)"
    if scaler is not None:
        return "fp16's GradScaler decides on the host whether a step is skipped (use --precision bf16)"
    if config.optimizer not in CAPTURABLE_OPTIMIZERS or config.optimizer_impl != "torch":
        return f"--optimizer {config.optimizer} (--optimizer-impl {config.optimizer_impl}) is not capturable"
    if config.compile:
        return "--compile makes its own graphs (torch.compile's mode='reduce-overhead')"
    return None


def resolve_cuda_graph(setting: str, refusal: str | None) -> tuple[bool, str]:
    """(capture?, the line the run prints about it). `on` with a refusal is bad input: it raises."""
    if setting not in GRAPH_SETTINGS:
        raise ValueError(f"--cuda-graph takes one of {', '.join(GRAPH_SETTINGS)}; got {setting!r}")
    if setting == "off":
        return False, "CUDA graph: off (--cuda-graph off)"
    if refusal is not None:
        if setting == "on":
            raise ValueError(f"--cuda-graph on cannot capture this run's step: {refusal}")
        return False, f"CUDA graph: off ({refusal})"
    return True, "CUDA graph: the whole step is captured once and replayed"


def capture_cuda_graph(body: Callable[[], dict], device: torch.device) -> tuple[Callable[[], None], dict]:
    """Captures `body` on a CUDA stream: (replay, the outputs, a dict of tensors or of dicts, lists and tuples of
    them, that a replay rewrites in place)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = body()
    return graph.replay, outputs


def replay_in_place(body: Callable[[], dict], device: torch.device) -> tuple[Callable[[], None], dict]:
    """What a captured graph does, on any device: each replay runs `body` on the same input buffers and writes
    its outputs into the same tensors (tests drive the graphed step this way on a CPU)."""
    outputs: dict = {}

    def replay() -> None:
        fresh = body()
        if not outputs:
            outputs.update(same_structure(fresh, torch.empty_like))
        for target, value in zip(flat_tensors(outputs), flat_tensors(fresh), strict=True):
            target.copy_(value)

    return replay, outputs


def flat_tensors(value) -> list[torch.Tensor]:
    """The tensors of a tensor, or of dicts, lists and tuples of them (None left out), in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in flat_tensors(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in flat_tensors(item)]
    return []


def same_structure(value, make: Callable[[torch.Tensor], torch.Tensor]):
    """`value` with `make` applied to each of its tensors, in flat_tensors' order (None stays None)."""
    if isinstance(value, torch.Tensor):
        return make(value)
    if isinstance(value, dict):
        return {key: same_structure(value[key], make) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return type(value)(same_structure(item, make) for item in value)
    return value


def run_on_side_stream(body: Callable[[], dict], device: torch.device) -> dict:
    """Warm-up steps run on a side stream before a capture (torch.cuda.graphs' rule)."""
    if device.type != "cuda":
        return body()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        outputs = body()
    torch.cuda.current_stream(device).wait_stream(side)
    return outputs


def prepare_for_capture(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's learning rate becomes a 0-d float32 tensor on `device`, which the schedule fills in place
    and a captured optimizer reads at every replay (a Python float would be frozen into the graph); Adam and
    AdamW are told they are captured. Done at the capture, after any resume has loaded the groups."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        if "capturable" in group:
            group["capturable"] = True


class GraphedStep:
    """The loop's step with `TrainStep.learn` captured after WARMUP_STEPS eager steps and replayed."""

    def __init__(self, step: TrainStep, device: torch.device, capture=capture_cuda_graph):
        self.step, self.device, self.capture = step, device, capture
        self.steps_run = 0
        self.replay: Callable[[], None] | None = None
        self.static_views = self.static_labels = None
        self.static_results: dict = {}  # {"losses": ..., "outputs": ...}, rewritten by each replay

    def learn(self, views: torch.Tensor, labels: torch.Tensor) -> dict:
        """`TrainStep.learn` as one dict, {"losses": ..., "outputs": ...}: what a capture records."""
        losses, outputs = self.step.learn(views, labels)
        return {"losses": losses, "outputs": outputs}

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        step = self.step
        if self.steps_run < WARMUP_STEPS:
            result = run_on_side_stream(lambda: self.learn(batch.views, batch.labels), self.device)
        elif self.replay is not None and batch.views.shape != self.static_views.shape:
            result = self.learn(batch.views, batch.labels)  # a ragged batch: eager, same arithmetic
        else:
            if self.replay is None:  # buffers of the batch's shape and memory format, then the capture
                self.static_views = torch.empty_like(batch.views)
                self.static_labels = torch.empty_like(batch.labels)
                prepare_for_capture(step.optimizer, self.device)
                self.replay, self.static_results = self.capture(
                    lambda: self.learn(self.static_views, self.static_labels), self.device)
            self.static_views.copy_(batch.views)
            self.static_labels.copy_(batch.labels)
            self.replay()
            result = self.static_results
        self.steps_run += 1
        step.scheduler.step()
        step.method.after_update(step.model, result["outputs"])  # eager, in place: the next replay reads it
        return result["losses"]
