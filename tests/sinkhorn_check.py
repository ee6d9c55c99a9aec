"""Run under `torchrun --nproc_per_node=2`: SwAV's Sinkhorn codes of a batch split over two ranks equal the
codes of the whole batch in one process; rank 0 writes a JSON verdict."""
import torch

from torchrun_check import all_ranks, run_check  # also puts the repository on sys.path

from train.methods.contrastive_losses import Ranks  # noqa: E402
from train.methods.swav import sinkhorn  # noqa: E402


def prototype_scores() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(10, 32, generator=generator), dim=1)
    prototypes = torch.nn.functional.normalize(torch.randn(7, 32, generator=generator), dim=1)
    return embeddings @ prototypes.T


def check(context, whole: torch.Tensor) -> dict:
    rank = context.rank
    local = sinkhorn(prototype_scores()[rank * 5:(rank + 1) * 5], ranks=Ranks(context.world_size, rank))
    return {"same_codes": all_ranks(torch.allclose(local, whole[rank * 5:(rank + 1) * 5], rtol=1e-12, atol=1e-15))}


if __name__ == "__main__":
    whole_batch_codes = sinkhorn(prototype_scores())  # before the group exists: one process, the whole batch
    run_check(lambda context: check(context, whole_batch_codes))
