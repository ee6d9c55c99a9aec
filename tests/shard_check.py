"""Run under `torchrun --nproc_per_node=2`: every loader's shards, train and eval; rank 0 writes a JSON verdict."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from pipeline.batch import LoaderSettings  # noqa: E402
from pipeline.datasets import build_splits  # noqa: E402
from pipeline.loaders import LOADERS, build_loader  # noqa: E402
from pipeline.views import ViewExpander  # noqa: E402
from train.distributed import init_distributed, shutdown  # noqa: E402


def main(out_path: str, cache_dir: str) -> None:
    context = init_distributed("cpu")
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
            sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(context.world_size)]
            dist.all_gather(sizes, torch.tensor([len(mine)]))
            padded = torch.full((int(max(sizes)),), -1, dtype=torch.int64)
            padded[:len(mine)] = mine
            everything = [torch.zeros_like(padded) for _ in range(context.world_size)]
            dist.all_gather(everything, padded)
            all_steps = [torch.zeros_like(steps) for _ in range(context.world_size)]
            dist.all_gather(all_steps, steps)
            indices = [i for part in everything for i in part.tolist() if i >= 0]
            verdict[f"{name}-{mode}"] = {"duplicates": len(indices) - len(set(indices)), "served": len(set(indices)),
                                         "expected": len(split),
                                         "per_rank_steps_equal": len({int(s) for s in all_steps}) == 1}
    if context.is_main:
        Path(out_path).write_text(json.dumps(verdict))
    shutdown(context)


if __name__ == "__main__":
    main(*sys.argv[1:3])
