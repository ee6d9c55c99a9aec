"""Run under `torchrun --nproc_per_node=2`: the streaming loaders' shards of a folder holding a truncated JPEG,
train and eval; rank 0 writes a JSON verdict (indices served and skipped over both ranks)."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from pipeline.batch import LoaderSettings  # noqa: E402
from pipeline.datasets import build_splits  # noqa: E402
from pipeline.loaders import build_loader  # noqa: E402
from pipeline.views import ViewExpander  # noqa: E402
from train.distributed import init_distributed, shutdown  # noqa: E402


def gathered(values: list[int], world_size: int) -> list[list[int]]:
    everything = [None] * world_size
    dist.all_gather_object(everything, values)
    return everything


def main(root: str, out_path: str, cache_dir: str) -> None:
    context = init_distributed("cpu")
    split = build_splits("folder", root, 32, 0.1, seed=0, data_in_memory="no", cache_dir=cache_dir).train
    expander = ViewExpander(kernels.get_family("rotation"), (0.5,) * 3, (0.25,) * 3)
    verdict = {}
    for name in ("torch", "dali", "ffcv"):
        for mode, train in (("train", True), ("eval", False)):
            if name == "ffcv" and not train:
                continue  # FFCV evaluates the strided shard of pipeline/sharding.py, as in tests/shard_check.py
            global_batch = 24 if train else 22
            settings = LoaderSettings(expander, torch.device("cpu"), global_batch, train=train, seed=5,
                                      rank=context.rank, world_size=context.world_size, workers=1,
                                      cache_dir=cache_dir)
            loader = build_loader(name, split, settings, split_name=f"stream-{mode}")
            loader.set_epoch(1)
            served = [i for batch in loader for i in batch.indices.tolist()]
            steps = gathered([len(loader)], context.world_size)
            served_all = [i for part in gathered(served, context.world_size) for i in part]
            skipped_all = [i for part in gathered(list(loader.skipped_this_epoch), context.world_size) for i in part]
            everything = served_all + skipped_all
            verdict[f"{name}-{mode}"] = {"duplicates": len(everything) - len(set(everything)),
                                         "served": len(set(served_all)), "skipped": len(skipped_all),
                                         "expected": len(split), "steps": steps[0][0], "global_batch": global_batch,
                                         "per_rank_steps_equal": len({s[0] for s in steps}) == 1}
    if context.is_main:
        Path(out_path).write_text(json.dumps(verdict))
    shutdown(context)


if __name__ == "__main__":
    main(*sys.argv[1:4])
