"""Run under `torchrun --nproc_per_node=2`: a checkpoint's random streams give each rank back its own."""
import torch

from torchrun_check import gather_objects, run_check  # also puts the repository on sys.path

from train.checkpoint import every_rank_rng_states, own_rng_states, restore_rng_states  # noqa: E402


def check(context) -> dict:
    torch.manual_seed(100 + context.rank)  # each rank its own stream, as train/main.py seeds them
    rank_rng = every_rank_rng_states(context)
    payload = {"rng": rank_rng[0], "rank_rng": rank_rng}  # what rank 0 writes to last.pt
    expected = torch.rand(3)  # this rank's next draws
    torch.manual_seed(0)  # a restarted process
    restore_rng_states(own_rng_states(payload, context.rank, context.world_size))
    again = torch.rand(3)
    draws = gather_objects(again.tolist())
    return {"own_stream_restored": torch.equal(expected, again) and len(rank_rng) == context.world_size,
            "ranks_differ": draws[0] != draws[1]}


if __name__ == "__main__":
    run_check(check)
