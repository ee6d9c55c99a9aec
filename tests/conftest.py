import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@pytest.fixture
def tiny_config(tmp_path):
    """A TrainConfig for a few seconds of training on 16×16 digits with the smallest ResNet."""
    from train.config import TrainConfig

    def make(**overrides):
        values = dict(dataset="digits", image_size=16, model="resnet8", batch_size=64, epochs=3, lr=0.1,
                      out_dir=str(tmp_path / "runs"), run_name="tiny", log_every=5, eval_batch_size=256,
                      schedule="cosine", warmup_iterations=0)
        values.update(overrides)
        return TrainConfig(**values)

    return make


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
