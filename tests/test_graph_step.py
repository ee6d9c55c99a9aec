"""--cuda-graph on a CPU: refused where it cannot run, said in the header where auto turns it off, and, driven
the way a CUDA graph replays (the batch copied into the same static buffers, the losses read from the same
tensors every step: train.graph_step.replay_in_place), the same training as the eager step, bit for bit."""
import functools
import json

import pytest
import torch

from train import graph_step, run as run_module
from train.main import train


def graphed_as_a_replay(monkeypatch):
    """The CPU's stand-in for a captured graph: nothing refuses, and the capture is replay_in_place."""
    monkeypatch.setattr(run_module, "graph_refusal", lambda *args: None)
    monkeypatch.setattr(run_module, "GraphedStep",
                        functools.partial(graph_step.GraphedStep, capture=graph_step.replay_in_place))


def step_losses(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timings = ("time", "images_per_s", "views_per_s", "mfu", "data_time_s", "compute_time_s")
    return [{k: v for k, v in r.items() if k not in timings} for r in records if r.get("kind") == "step"]


def test_cuda_graph_on_is_refused_without_a_cuda_device(tiny_config):
    with pytest.raises(ValueError, match="--cuda-graph on cannot capture this run's step: no CUDA device"):
        train(tiny_config(cuda_graph="on", epochs=1))


def test_auto_says_in_the_header_why_the_step_runs_eagerly(tiny_config, tmp_path, capsys):
    train(tiny_config(epochs=1, samples_per_class=8))
    assert "CUDA graph: off (no CUDA device (the run is on cpu))" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "runs" / "tiny" / "config.json").read_text())
    assert manifest["cuda_graph"] is False


CONTRASTIVE = dict(projector_hidden=64, projector_dim=32, queue_size=48, knn_k=20, batch_size=32)


@pytest.mark.parametrize("settings", [
    dict(method="sla_sd"),
    dict(method="hsakd_online", optimizer="adamw", lr=2e-3, ema_decay=0.9, grad_clip_norm=1.0),
    dict(method="moco_v2", **CONTRASTIVE),  # its momentum encoder and key queue, updated after each replay
    dict(method="byol", **CONTRASTIVE),  # its cosine momentum schedule and predictor
], ids=lambda settings: settings["method"])
def test_a_replayed_step_trains_as_the_eager_one(settings, tiny_config, tmp_path, monkeypatch):
    """Same seed, same batches: the loss curve, the scores and every weight and optimizer state agree exactly
    (the replay runs the same kernels on copies of the same inputs). The logged learning rate is the float32
    tensor's under the graph, the schedule's double otherwise: one float32 rounding apart, and the optimizers
    compute with the float32 value either way."""
    common = dict(epochs=2, samples_per_class=20, log_every=1, precision="fp32", **settings)
    eager = train(tiny_config(run_name="eager", cuda_graph="off", **common))
    graphed_as_a_replay(monkeypatch)
    replayed = train(tiny_config(run_name="replayed", cuda_graph="on", **common))
    runs = tmp_path / "runs"
    assert json.loads((runs / "replayed" / "config.json").read_text())["cuda_graph"] is True
    assert eager["steps"] > graph_step.WARMUP_STEPS + 2  # replays happened
    replayed_steps, eager_steps = step_losses(runs / "replayed"), step_losses(runs / "eager")
    assert [r["lr"] for r in replayed_steps] == pytest.approx([r["lr"] for r in eager_steps], rel=2**-24, abs=0)
    assert [{**r, "lr": 0} for r in replayed_steps] == [{**r, "lr": 0} for r in eager_steps]
    assert replayed["test"] == eager["test"]
    straight, graphed = (torch.load(runs / name / "last.pt", weights_only=True) for name in ("eager", "replayed"))
    for name, value in straight["model"].items():
        assert torch.equal(graphed["model"][name], value), name
    for part in ("target", "queue"):  # a momentum encoder and a queue, where the method has them
        expected, got = straight["method_state"].get(part), graphed["method_state"].get(part)
        if isinstance(expected, dict):
            assert all(torch.equal(got[name], value) for name, value in expected.items()), part
        elif expected is not None:
            assert torch.equal(got, expected), part
    for (index, state), (_, other) in zip(straight["optimizer"]["state"].items(),
                                          graphed["optimizer"]["state"].items()):
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(other[key]), torch.as_tensor(value)), (index, key)


def test_a_replayed_run_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    """Stopped after one epoch and resumed (the capture made again after the resume's warm-up steps), a replayed
    run ends with the weights of one that ran straight through."""
    graphed_as_a_replay(monkeypatch)
    common = dict(method="sla_sd", epochs=2, samples_per_class=20, precision="fp32", cuda_graph="on")
    train(tiny_config(run_name="straight", **common))
    train(tiny_config(run_name="resumed", stop_after_epochs=1, **common))
    train(tiny_config(run_name="resumed", resume=str(tmp_path / "runs" / "resumed" / "last.pt"), **common))
    straight, resumed = (torch.load(tmp_path / "runs" / name / "last.pt", weights_only=True)["model"]
                         for name in ("straight", "resumed"))
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
