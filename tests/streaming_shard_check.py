"""Run under `torchrun --nproc_per_node=2`: the streaming loaders' shards of a folder holding a truncated JPEG,
train and eval; rank 0 writes a JSON verdict (indices served and skipped over both ranks)."""
import torch

from torchrun_check import gather_objects, run_check  # also puts the repository on sys.path

import kernels  # noqa: E402
from pipeline.batch import LoaderSettings  # noqa: E402
from pipeline.datasets import build_splits  # noqa: E402
from pipeline.loaders import build_loader  # noqa: E402
from pipeline.views import ViewExpander  # noqa: E402


def check(context, root: str, cache_dir: str) -> dict:
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
            steps = gather_objects([len(loader)])
            served_all = [i for part in gather_objects(served) for i in part]
            skipped_all = [i for part in gather_objects(list(loader.skipped_this_epoch)) for i in part]
            everything = served_all + skipped_all
            verdict[f"{name}-{mode}"] = {"duplicates": len(everything) - len(set(everything)),
                                         "served": len(set(served_all)), "skipped": len(skipped_all),
                                         "expected": len(split), "steps": steps[0][0], "global_batch": global_batch,
                                         "per_rank_steps_equal": len({s[0] for s in steps}) == 1}
    return verdict


if __name__ == "__main__":
    run_check(check)
