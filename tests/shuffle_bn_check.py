"""Run under `torchrun --nproc_per_node=2`: MoCo v2's shuffled-BN keys equal keys computed, in one process,
on the shards of the same permutation of the global batch and put back in order; they differ from keys
computed on each rank's own batch (BatchNorm sees other images). Rank 0 writes a JSON verdict."""
import torch
import torch.nn as nn

from torchrun_check import all_ranks, run_check  # also puts the repository on sys.path

from train.config import TrainConfig  # noqa: E402
from pipeline.sharding import SHUFFLE_STREAM, derived_seed  # noqa: E402
from train.methods.contrastive import ContrastiveNetwork, MocoV2, mlp  # noqa: E402

PER_RANK = 5  # odd on purpose


class TinyBackbone(nn.Sequential):
    feature_dim = 4

    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def check(context) -> dict:
    rank, world = context.rank, context.world_size
    torch.manual_seed(0)  # the same target network on every rank
    method = MocoV2(TrainConfig(method="moco_v2", transforms="none", seed=3))
    method.attach(context)
    backbone = TinyBackbone()
    method.target = ContrastiveNetwork(backbone, mlp([backbone.feature_dim, 8, 5])).double()
    method.steps_done = 7
    whole = torch.randn(world * PER_RANK, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    local = whole[rank * PER_RANK:(rank + 1) * PER_RANK]
    shuffled = method.shuffled_key_projections(local)

    order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(derived_seed(3, 7, SHUFFLE_STREAM)))
    expected = torch.empty(len(whole), 5, dtype=torch.float64)
    with torch.no_grad():
        for shard in order.view(world, PER_RANK):
            expected[shard] = method.target_projections(whole[shard])
    own_batch = method.target_projections(local)
    method.config.shuffle_bn = False
    unshuffled = method.shuffled_key_projections(local)
    return {"equals_one_process_shards": all_ranks(torch.allclose(shuffled,
                                                                  expected[rank * PER_RANK:(rank + 1) * PER_RANK],
                                                                  atol=1e-12)),
            "differs_from_own_batch": all_ranks(bool((shuffled - own_batch).abs().max() > 1e-6)),
            "off_means_own_batch": all_ranks(torch.equal(unshuffled, own_batch))}


if __name__ == "__main__":
    run_check(check)
