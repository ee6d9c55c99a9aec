"""torchrun conventions: RANK / LOCAL_RANK / WORLD_SIZE from the environment, env:// initialisation,
gloo on CPU and NCCL on GPU; a plain `python train/main.py` is a world of one."""
from __future__ import annotations

import datetime
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
    owns_group: bool = False  # init_distributed started the process group, so shutdown ends it

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


def restart_store(world_size: int, timeout: datetime.timedelta):
    """torchrun's own store (MASTER_ADDR:MASTER_PORT), under a prefix of its own for each restart. torchrun lends
    its workers the agent's store and keeps it across restarts, so that a restarted group read the addresses
    the killed group had published and could not connect (pytorch/pytorch#135712); None: plain env://."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)


def init_distributed(requested_device: str, timeout_s: int = 300) -> DistributedContext:
    """`timeout_s` bounds each collective: a rank that fails or hangs ends the others within it, not within
    gloo's 30 minutes or NCCL's 10. A group the caller started before (a script that trains several runs in one
    launch) is used as it is and stays the caller's to end."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    starts_group = "RANK" in os.environ and not dist.is_initialized()
    if starts_group:
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=restart_store(world_size, timeout),
                                rank=rank, world_size=world_size, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)
    return DistributedContext(rank, world_size, device, owns_group=starts_group)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.initialised and context.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(value, context: DistributedContext):
    """Rank 0's `value` on every rank (any picklable object)."""
    if not (context.initialised and context.world_size > 1):
        return value
    box = [value if context.is_main else None]
    dist.broadcast_object_list(box, src=0, device=context.device if context.device.type == "cuda" else None)
    return box[0]


def barrier(context: DistributedContext) -> None:
    if context.initialised:
        dist.barrier()


def shutdown(context: DistributedContext, failed: bool = False) -> None:
    """Destroy the process group while the interpreter is fully alive. Left to interpreter exit, gloo's
    worker threads still hold DDP's last all-reduce work (tensors with Python references); freeing
    them during finalisation aborts the process ("terminate called without an active exception").
    The caller's DDP wrapper and step are gone by now; collect any cycle that still holds them. A group this
    context did not start is left as it is."""
    if not (context.initialised and context.owns_group):
        return
    gc.collect()
    if not failed:
        dist.barrier()  # gloo aborts a rank that tears down while its peer still talks to it
    dist.destroy_process_group()
