"""The GPU path on a real device (skipped without one; `make gpu-check` runs them): every loader on the device,
a short run of each method family, the precisions users train in, a resume that repeats a run exactly, and
no host sync in a steady step (torch.cuda.set_sync_debug_mode)."""
import dataclasses
import json
import math
import warnings

import pytest
import torch

from train.config import TrainConfig
from train.main import train

pytestmark = pytest.mark.gpu

SMALL_HEADS = dict(projector_hidden=64, projector_dim=32)


def gpu_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(dataset="digits", image_size=16, model="resnet8", batch_size=64, epochs=2, lr=0.1, device="cuda",
                  precision="auto", out_dir=str(tmp_path / "runs"), run_name="gpu", log_every=2, eval_batch_size=256,
                  beton_dir=str(tmp_path / "betons"), loader_workers=2)
    values.update(overrides)
    return TrainConfig(**values)


def step_records(tmp_path, run_name: str = "gpu") -> list[dict]:
    lines = (tmp_path / "runs" / run_name / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


def assert_learns(tmp_path, summary: dict, run_name: str = "gpu") -> None:
    steps = step_records(tmp_path, run_name)
    assert all(math.isfinite(r["loss"]) for r in steps), steps
    assert steps[-1]["loss"] < steps[0]["loss"], [r["loss"] for r in steps]
    assert summary["images_per_s"] > 0 and 0 < summary["mfu"] < 1


def dali_gpu_available() -> bool:
    try:
        from nvidia.dali.backend import GetCudaVersion  # noqa: F401  (the CUDA build of DALI)

        return True
    except ImportError:
        return False


@pytest.mark.parametrize("loader,extra", [
    ("resident", {}),
    ("torch", {}),
    ("ffcv", {}),
    ("dali", {}),
])
def test_every_loader_trains_on_the_device(loader, extra, tmp_path):
    if loader == "dali" and not dali_gpu_available():
        pytest.skip("DALI's CUDA build is not installed: its GPU and mixed decoding are not checked")
    if loader == "ffcv":
        pytest.importorskip("ffcv", reason="FFCV is not installed: its loader is not checked on the device")
    summary = train(gpu_config(tmp_path, method="sla_sd", loader=loader, **extra))
    assert_learns(tmp_path, summary)
    manifest = json.loads((tmp_path / "runs" / "gpu" / "config.json").read_text())
    assert manifest["device"].startswith("cuda") and manifest["cudnn_benchmark"] is True


@pytest.mark.parametrize("method,extra", [
    ("sla_sd", {}),
    ("hsakd_teacher", {}),
    ("maxl", dict(transforms="none")),
    ("simclr", SMALL_HEADS),
    ("swav", dict(local_views=2, num_prototypes=20, **SMALL_HEADS)),
    ("moco_v3", dict(model="vit_tiny", optimizer="adamw", lr=1e-3, weight_decay=0.05, **SMALL_HEADS)),
])
def test_each_family_trains_an_epoch_on_the_device(method, extra, tmp_path):
    summary = train(gpu_config(tmp_path, method=method, epochs=1 if method != "maxl" else 2, **extra))
    steps = step_records(tmp_path)
    assert steps and all(math.isfinite(r["loss"]) for r in steps)
    assert summary["completed"] and summary["images_per_s"] > 0


@pytest.mark.parametrize("precision,extra", [
    ("bf16", dict(channels_last=True)),
    ("fp16", {}),
    ("bf16", dict(compile=True)),
])
def test_the_loss_falls_in_every_precision(precision, extra, tmp_path):
    summary = train(gpu_config(tmp_path, method="sla_sd", precision=precision, epochs=3, **extra))
    assert_learns(tmp_path, summary)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    config = gpu_config(tmp_path, method="sla_sd", epochs=2, cudnn_benchmark=False)
    train(dataclasses.replace(config, run_name="straight"))
    train(dataclasses.replace(config, run_name="paused", stop_after_epochs=1))
    train(dataclasses.replace(config, resume=str(tmp_path / "runs" / "paused" / "last.pt")))
    straight = torch.load(tmp_path / "runs" / "straight" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "runs" / "paused" / "last.pt", weights_only=True)["model"]
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


@pytest.mark.parametrize("method,extra", [("sla_sd", {}), ("simclr", SMALL_HEADS)])
def test_a_steady_step_makes_no_host_sync_on_the_device(method, extra, tmp_path, monkeypatch):
    """torch's own sync detector, on for steps 3–5: every sync it reports is a warning."""
    from train.profiling import StepProfiler

    begin_step, end_step = StepProfiler.begin_step, StepProfiler.end_step

    def begin(self, index):
        begin_step(self, index)
        if index == 3:
            torch.cuda.set_sync_debug_mode("warn")

    def end(self, index):
        if index == 5:
            torch.cuda.set_sync_debug_mode("default")
        return end_step(self, index)

    monkeypatch.setattr(StepProfiler, "begin_step", begin)
    monkeypatch.setattr(StepProfiler, "end_step", end)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(gpu_config(tmp_path, method=method, epochs=1, log_every=50, **extra))
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    print(f"host syncs in 3 steady steps of {method}: {len(syncs)}")
    assert not syncs, syncs[:3]
