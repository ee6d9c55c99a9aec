"""What every torchrun check script (tests/*_check.py) shares. A check is a function of this rank's
DistributedContext and the script's arguments that returns its verdict, a JSON-able dict (every rank
computes the same one); `run_check` starts the process group, runs it, and rank 0 writes the verdict
atomically to the path that is the script's first argument. The test reads it with
conftest.torchrun_verdict."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.distributed import init_distributed, shutdown  # noqa: E402


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape on every rank), in rank order."""
    parts = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return parts


def gather_objects(value) -> list:
    """Every rank's picklable `value`, in rank order."""
    everything = [None] * dist.get_world_size()
    dist.all_gather_object(everything, value)
    return everything


def all_ranks(flag: bool) -> bool:
    """True when `flag` holds on every rank."""
    flags = torch.tensor([float(flag)], dtype=torch.float64)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return bool(flags.item())


def run_check(check) -> None:
    """`python tests/x_check.py VERDICT_PATH ARGS...` under torchrun: check(context, *ARGS) → the verdict."""
    verdict_path, *arguments = sys.argv[1:]
    context = init_distributed("cpu")
    try:
        verdict = check(context, *arguments)
    except BaseException:
        shutdown(context, failed=True)
        raise
    if context.is_main:
        temporary = Path(f"{verdict_path}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(verdict))
        os.replace(temporary, verdict_path)  # the test sees a whole verdict or none
    shutdown(context)
