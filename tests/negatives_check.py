"""Run under `torchrun --nproc_per_node=2`: SimCLR's NT-Xent with negatives gathered from both ranks equals the
one-process loss over the whole batch, and so does each rank's gradient; rank 0 writes a JSON verdict."""
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.methods.contrastive_losses import nt_xent  # noqa: E402


def main(out_path: str) -> None:
    whole = torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # 6 images × 2 views
    reference_input = whole.clone().requires_grad_()
    reference = nt_xent(reference_input, 0.5)  # before the group exists: one process, the whole batch
    reference.backward()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = whole[rank * 6:(rank + 1) * 6].clone().requires_grad_()
    loss = nt_xent(local, 0.5)
    loss.backward()  # the gather's backward sums every rank's gradient into the local rows
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)
    global_loss /= world
    grad_ok = torch.allclose(local.grad / world, reference_input.grad[rank * 6:(rank + 1) * 6], atol=1e-12)
    flags = torch.tensor([float(grad_ok)], dtype=torch.float64)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    # unequal shards (a streamed batch that lost unreadable files): rank 0 holds 4 images, rank 1 holds 2;
    # each rank's loss weighted by its share of the rows sums to the one-process loss, and so do the gradients
    rows = (0, 8) if rank == 0 else (8, 12)
    uneven = whole[rows[0]:rows[1]].clone().requires_grad_()
    weighted = nt_xent(uneven, 0.5) * (rows[1] - rows[0]) / 12
    weighted.backward()
    uneven_loss = weighted.detach().clone()
    dist.all_reduce(uneven_loss)
    uneven_ok = torch.tensor([float(torch.allclose(uneven.grad, reference_input.grad[rows[0]:rows[1]], atol=1e-12))],
                             dtype=torch.float64)
    dist.all_reduce(uneven_ok, op=dist.ReduceOp.MIN)
    if rank == 0:
        Path(out_path).write_text(json.dumps({"loss": global_loss.item(), "reference": reference.item(),
                                              "gradients_match": bool(flags.item()),
                                              "uneven_loss": uneven_loss.item(),
                                              "uneven_gradients_match": bool(uneven_ok.item())}))
    del loss, reference, local, weighted, uneven  # free the autograd graph around the collective before the group goes
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
