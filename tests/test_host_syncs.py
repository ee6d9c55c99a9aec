"""The host-sync budget, held on a CPU: a few steady-state training steps of each method family, counted by
train/host_syncs.py. On a GPU every counted sync makes the host wait for the device, and every tensor a step
builds from host data is a host-to-device copy. Budget between log steps: no sync, and at most one fresh host
tensor per step (none on the resident loader). `make gpu-check` measures the same on a device."""
import pytest

from train.config import TrainConfig
from train.host_syncs import HostSyncCounter
from train.profiling import StepProfiler

FIRST, LAST = 2, 4  # the counted steps (0-based within the run): past the first, before any log step
SMALL_HEADS = dict(projector_hidden=64, projector_dim=32)


def counted_steps(monkeypatch, tmp_path, first=FIRST, last=LAST, **settings) -> tuple[HostSyncCounter, dict]:
    """Train a tiny run and count steps first..last, from the fetch of each batch to the end of its update; returns
    the counter and the run's summary."""
    from train.main import train

    counter = HostSyncCounter()
    begin_step, end_step = StepProfiler.begin_step, StepProfiler.end_step

    def begin(self, index):
        begin_step(self, index)
        if index == first:
            counter.__enter__()

    def end(self, index):
        if index == last:
            counter.__exit__(None, None, None)
        return end_step(self, index)

    monkeypatch.setattr(StepProfiler, "begin_step", begin)
    monkeypatch.setattr(StepProfiler, "end_step", end)
    values = dict(dataset="digits", image_size=16, model="resnet8", batch_size=16, epochs=1, samples_per_class=12,
                  log_every=50, eval_batch_size=128, loader_workers=1, out_dir=str(tmp_path / "runs"),
                  run_name="count", beton_dir=str(tmp_path / "betons"))
    values.update(settings)
    summary = train(TrainConfig(**values))
    assert summary["steps"] > last  # the window was inside the run
    return counter, summary


# The other loaders' budget is held by tests/test_training.py's run on each of them.
CASES = {
    "sla_sd-resident": dict(method="sla_sd"),
    "sla_sd-ema": dict(method="sla_sd", ema_decay=0.9),
    "sla_sd-composite": dict(method="sla_sd", kernels="torch"),  # what --kernels auto takes on a GPU
    "hsakd_teacher-composite": dict(method="hsakd_teacher", kernels="torch"),
    "maxl": dict(method="maxl", transforms="none"),
    "simclr": dict(method="simclr", **SMALL_HEADS),
    "byol": dict(method="byol", **SMALL_HEADS),
    "swav-multi-crop": dict(method="swav", local_views=2, num_prototypes=20, **SMALL_HEADS),
    "moco_v3": dict(method="moco_v3", **SMALL_HEADS),
    "dim-infonce": dict(method="dim"),
    "dim-jsd": dict(method="dim", mi_estimator="jsd"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_steady_step_makes_no_host_sync(case, monkeypatch, tmp_path):
    counter, _ = counted_steps(monkeypatch, tmp_path, **CASES[case])
    assert counter.syncs == 0 and counter.fresh == 0, dict(counter.counts)


def test_a_replayed_graph_step_makes_no_host_sync(monkeypatch, tmp_path):
    """--cuda-graph on, driven as a replay on the CPU (tests/test_graph_step.py): past the capture, a step copies
    the batch into the static buffers, replays and fills the learning rate, and nothing else."""
    from test_graph_step import graphed_as_a_replay
    from train.graph_step import WARMUP_STEPS

    graphed_as_a_replay(monkeypatch)
    counter, _ = counted_steps(monkeypatch, tmp_path, first=WARMUP_STEPS + 1, last=WARMUP_STEPS + 3, method="sla_sd",
                            cuda_graph="on", samples_per_class=20)
    assert counter.syncs == 0 and counter.fresh == 0, dict(counter.counts)


def test_a_distilled_student_step_makes_no_host_sync(monkeypatch, tmp_path):
    import kernels
    from train.commands.bench.step import write_untrained_teacher

    teacher = write_untrained_teacher(tmp_path / "teacher.pt", "resnet8", 10, kernels.get_family("rotation"))
    counter, _ = counted_steps(monkeypatch, tmp_path, method="hsakd_student", teacher=teacher, teacher_model="resnet8")
    assert counter.syncs == 0 and counter.fresh == 0, dict(counter.counts)


def test_the_counter_sees_what_would_make_a_gpu_host_wait():
    import torch

    values = torch.arange(6.0)
    with HostSyncCounter() as counter:
        values[0].item()
        bool(values.any())
        values.tolist()
        values[values > 2]
        torch.nonzero(values)
        torch.tensor([1.0, 2.0])
        values.masked_fill(values > 2, 0.0)  # on the device throughout: not counted
    assert counter.syncs == 5 and counter.fresh == 1, dict(counter.counts)
