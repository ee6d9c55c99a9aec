"""Checkpoints: a resumed run ends with the same weights as an uninterrupted one; writes are atomic."""
import torch
import pytest

from train import checkpoint
from train.main import train


def final_weights(run_dir):
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("method,extra", [("sla_sd", {}), ("sla", {"ema_decay": 0.9, "schedule": "multistep",
                                                                     "nesterov": True, "grad_clip_norm": 1.0})])
def test_resume_continues_exactly(tiny_config, tmp_path, method, extra):
    settings = dict(method=method, epochs=3, samples_per_class=20, **extra)
    straight = train(tiny_config(run_name="straight", **settings))
    paused = train(tiny_config(run_name="resumed", stop_after_epochs=1, **settings))
    assert paused["completed"] is False and paused["step"] == straight["steps"] // 3
    resumed = train(tiny_config(run_name="ignored", resume=str(tmp_path / "runs" / "resumed" / "last.pt"),
                                **settings))
    assert resumed["run_dir"] == str(tmp_path / "runs" / "resumed")
    a, b = final_weights(tmp_path / "runs" / "straight"), final_weights(tmp_path / "runs" / "resumed")
    assert a["step"] == b["step"] == straight["steps"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    if extra.get("ema_decay"):
        for name, tensor in a["ema"].items():
            assert torch.equal(tensor, b["ema"][name]), name
    assert resumed["test"] == straight["test"]


def test_interrupted_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    checkpoint.atomic_save({"step": 1, "weights": torch.arange(10)}, target)
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"step": 2, "weights": torch.zeros(10)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    loaded = torch.load(target, weights_only=True)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.arange(10))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
