"""Run under `torchrun --nproc_per_node=2`: checks shards and DDP gradient averaging; rank 0 writes a JSON verdict."""
import copy

import torch

from torchrun_check import gather, run_check  # also puts the repository on sys.path

from models import HeadSpec, MultiHeadNetwork, build_backbone  # noqa: E402
from pipeline.sharding import training_shard  # noqa: E402


def check(context) -> dict:
    verdict = {"world_size": context.world_size}

    # Shards: disjoint across ranks, together every index of the kept global batches once.
    shard = training_shard(num_samples=103, global_batch=10, rank=context.rank, world_size=context.world_size,
                           seed=7, epoch=3)
    everything = torch.cat(gather(shard))
    verdict["shard_sizes"] = [int(size) for size in gather(torch.tensor([len(shard)]))]  # every rank's own
    verdict["shards_disjoint"] = len(set(everything.tolist())) == len(everything) == 100

    # Gradients: DDP's are the mean of the per-rank local gradients.
    torch.manual_seed(0)
    model = MultiHeadNetwork(build_backbone("resnet8"), [HeadSpec("joint", 12)], 4)
    local_model = copy.deepcopy(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    torch.manual_seed(100 + context.rank)  # each rank its own batch
    views = torch.randn(8, 3, 8, 8)
    ddp(views)["joint"].logsumexp(1).mean().backward()
    local_model(views)["joint"].logsumexp(1).mean().backward()
    worst = 0.0
    for averaged, local in zip(model.parameters(), local_model.parameters()):
        mean_local = torch.stack(gather(local.grad)).mean(0)
        worst = max(worst, (averaged.grad - mean_local).abs().max().item())
        differs = not torch.allclose(gather(local.grad)[0], gather(local.grad)[1])
        verdict["local_gradients_differ"] = verdict.get("local_gradients_differ", False) or differs
    verdict["max_gradient_error"] = worst
    return verdict


if __name__ == "__main__":
    run_check(check)
