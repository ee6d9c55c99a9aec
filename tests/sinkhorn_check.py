"""Run under `torchrun --nproc_per_node=2`: SwAV's Sinkhorn codes of a batch split over two ranks equal the
codes of the whole batch in one process; rank 0 writes a JSON verdict."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.methods.swav import sinkhorn  # noqa: E402


def main(out_path: str) -> None:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(10, 32, generator=generator), dim=1)
    prototypes = torch.nn.functional.normalize(torch.randn(7, 32, generator=generator), dim=1)
    whole = sinkhorn(embeddings @ prototypes.T)  # before the group exists: one process
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    local = sinkhorn((embeddings @ prototypes.T)[rank * 5:(rank + 1) * 5])
    same = torch.tensor([float(torch.allclose(local, whole[rank * 5:(rank + 1) * 5], rtol=1e-12, atol=1e-15))])
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    if rank == 0:
        Path(out_path).write_text(json.dumps({"same_codes": bool(same.item())}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
