"""GPU smoke test of the training loop: the resident loader, the Numba CUDA kernels, bf16 autocast and
channels_last on a real device (skipped without a GPU)."""
import json
import math

import pytest
import torch

from train.main import train

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["sla_sd", "hsakd_teacher"])
def test_a_short_run_trains_on_the_gpu(method, tiny_config, tmp_path):
    summary = train(tiny_config(method=method, device="cuda", epochs=2, precision="auto", kernels="auto",
                                run_name=method))
    records = [json.loads(line) for line in (tmp_path / "runs" / method / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((tmp_path / "runs" / method / "config.json").read_text())
    steps = [r for r in records if r["kind"] == "step"]
    assert manifest["device"].startswith("cuda") and manifest["precision"] in ("bf16", "fp32")
    assert all(math.isfinite(r["loss"]) for r in steps) and steps[-1]["loss"] < steps[0]["loss"]
    assert 0 < summary["mfu"] < 1 and summary["images_per_s"] > 0
    assert torch.cuda.max_memory_allocated() > 0
