"""Run under `torchrun --nproc_per_node=2`: every loader's shards, train and eval; rank 0 writes a JSON verdict."""
import torch

from torchrun_check import gather, run_check  # also puts the repository on sys.path

import kernels  # noqa: E402
from pipeline.batch import LoaderSettings  # noqa: E402
from pipeline.datasets import build_splits  # noqa: E402
from pipeline.loaders import LOADERS, build_loader  # noqa: E402
from pipeline.views import ViewExpander  # noqa: E402


def check(context, cache_dir: str) -> dict:
    split = build_splits("digits", "unused", 16, 0.1, seed=0).val  # 144 images: 6 global batches of 24
    expander = ViewExpander(kernels.get_family("rotation"), (0.5,) * 3, (0.25,) * 3)
    verdict = {}
    for name in LOADERS:
        for mode, train in (("train", True), ("eval", False)):
            settings = LoaderSettings(expander, torch.device("cpu"), 24 if train else 22, train=train, seed=5,
                                      rank=context.rank, world_size=context.world_size, workers=1,
                                      cache_dir=cache_dir)
            loader = build_loader(name, split, settings, split_name=f"digits-val-{mode}")
            loader.set_epoch(2)
            served = [batch.indices for batch in loader]
            steps = torch.tensor([len(served)])
            mine = torch.cat(served)
            sizes = gather(torch.tensor([len(mine)]))
            padded = torch.full((int(max(sizes)),), -1, dtype=torch.int64)
            padded[:len(mine)] = mine
            everything = gather(padded)
            all_steps = gather(steps)
            indices = [i for part in everything for i in part.tolist() if i >= 0]
            verdict[f"{name}-{mode}"] = {"duplicates": len(indices) - len(set(indices)), "served": len(set(indices)),
                                         "expected": len(split),
                                         "per_rank_steps_equal": len({int(s) for s in all_steps}) == 1}
    return verdict


if __name__ == "__main__":
    run_check(check)
