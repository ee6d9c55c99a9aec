"""torchrun conventions: RANK / LOCAL_RANK / WORLD_SIZE from the environment, env:// initialisation,
gloo on CPU and NCCL on GPU; a plain `python train/main.py` is a world of one."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialised(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if requested != "cpu":
        raise ValueError(f"unknown device {requested!r}; valid: auto, cpu, cuda")
    return torch.device("cpu")


def init_distributed(requested_device: str) -> DistributedContext:
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world_size,
                                device_id=device if device.type == "cuda" else None)
    return DistributedContext(rank, world_size, device)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.initialised and context.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(context: DistributedContext) -> None:
    if context.initialised:
        dist.barrier()


def shutdown(context: DistributedContext, failed: bool = False) -> None:
    """Destroy the process group while the interpreter is fully alive. Left to interpreter exit, gloo's
    worker threads still hold DDP's last all-reduce work (tensors with Python references); freeing
    them during finalisation aborts the process ("terminate called without an active exception").
    The caller's DDP wrapper and step are gone by now; collect any cycle that still holds them."""
    if not context.initialised:
        return
    gc.collect()
    if not failed:
        dist.barrier()  # gloo aborts a rank that tears down while its peer still talks to it
    dist.destroy_process_group()
