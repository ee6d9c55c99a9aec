"""Run under `torchrun --nproc_per_node=2`: SimCLR's NT-Xent with negatives gathered from both ranks equals the
one-process loss over the whole batch, and so does each rank's gradient; rank 0 writes a JSON verdict."""
import torch
import torch.distributed as dist

from torchrun_check import all_ranks, run_check  # also puts the repository on sys.path

from train.methods.contrastive_losses import Ranks, nt_xent  # noqa: E402


def whole_batch() -> torch.Tensor:
    return torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # 6 images × 2 views


def one_process_loss() -> tuple[torch.Tensor, torch.Tensor]:
    """The loss over the whole batch and its gradient, in one process."""
    reference_input = whole_batch().requires_grad_()
    reference = nt_xent(reference_input, 0.5)
    reference.backward()
    return reference.detach(), reference_input.grad


def check(context, reference: torch.Tensor, reference_grad: torch.Tensor) -> dict:
    whole = whole_batch()
    rank, world = context.rank, context.world_size
    local = whole[rank * 6:(rank + 1) * 6].clone().requires_grad_()
    loss = nt_xent(local, 0.5, ranks=Ranks(world, rank))  # even shards: no count exchange
    loss.backward()  # the gather's backward sums every rank's gradient into the local rows
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)
    global_loss /= world
    gradients_match = all_ranks(torch.allclose(local.grad / world, reference_grad[rank * 6:(rank + 1) * 6], atol=1e-12))
    # unequal shards (a streamed batch that lost unreadable files): rank 0 holds 4 images, rank 1 holds 2;
    # each rank's loss weighted by its share of the rows sums to the one-process loss, and so do the gradients
    rows = (0, 8) if rank == 0 else (8, 12)
    uneven = whole[rows[0]:rows[1]].clone().requires_grad_()
    weighted = nt_xent(uneven, 0.5, ranks=Ranks(world, rank, even_rows=False)) * (rows[1] - rows[0]) / 12
    weighted.backward()
    uneven_loss = weighted.detach().clone()
    dist.all_reduce(uneven_loss)
    uneven_gradients_match = all_ranks(torch.allclose(uneven.grad, reference_grad[rows[0]:rows[1]], atol=1e-12))
    return {"loss": global_loss.item(), "reference": reference.item(), "gradients_match": gradients_match,
            "uneven_loss": uneven_loss.item(), "uneven_gradients_match": uneven_gradients_match}


if __name__ == "__main__":
    one_process = one_process_loss()  # before the group exists: one process, the whole batch
    run_check(lambda context: check(context, *one_process))
