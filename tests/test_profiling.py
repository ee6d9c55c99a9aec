"""--profile's breakdown accounts for the step time and leaves a loadable trace; report.py draws a run."""
import json

import pytest

from train.commands import report
from train.main import main, train
from train.profiling import PHASES, parse_window, verdict


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    from train.config import TrainConfig

    out = tmp_path_factory.mktemp("runs")
    train(TrainConfig(dataset="digits", image_size=16, model="resnet8", batch_size=64, epochs=1, method="sla_sd",
                      out_dir=str(out), run_name="profiled", log_every=5, profile="3:6", loader="torch",
                      loader_workers=1))
    return out / "profiled"


def test_profile_window_breakdown_sums_to_the_step_time(profiled_run, capsys):
    records = [json.loads(line) for line in (profiled_run / "metrics.jsonl").read_text().splitlines()]
    (profile,) = [r for r in records if r["kind"] == "profile"]
    assert profile["steps"] == 6 and profile["step"] == 9
    assert set(profile["phase_s"]) == set(PHASES)
    assert all(profile["phase_s"][name] > 0 for name in ("data", "copy", "expand", "forward", "loss", "backward",
                                                         "optimizer"))
    assert abs(profile["phases_sum_s"] - profile["step_time_s"]) <= 0.05 * profile["step_time_s"]
    assert abs(sum(profile["phase_share"].values()) - 1) <= 0.05
    assert profile["verdict"] == verdict(profile["phase_share"], profile["device_busy_share"])
    trace = json.loads((profiled_run / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert any("conv" in str(name) for name in names)  # the model's work is in the trace


def test_report_writes_non_empty_figures(profiled_run):
    written = report.render(profiled_run)
    assert {path.name for path in written} == {"loss.png", "accuracy.png", "throughput.png", "phases.png"}
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_report_on_a_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["5", "a:b", "-1:3", "2:0"])
def test_bad_profile_windows_are_refused(text, tmp_path, capsys):
    with pytest.raises(ValueError, match="--profile"):
        parse_window(text)
    assert main([f"--profile={text}", "--out-dir", str(tmp_path)]) == 2
    assert "error: --profile" in capsys.readouterr().err


@pytest.mark.parametrize("shares,expected", [
    (dict(data=0.5, forward=0.5), "loader-bound: 50%"),
    (dict(data=0.1, copy=0.2, expand=0.2, forward=0.5), "input-bound: 50%"),
    (dict(forward=0.6, optimizer=0.4), "optimizer-bound: 40%"),
    (dict(data=0.05, teacher=0.25, forward=0.3, loss=0.1, backward=0.3), "compute-bound: 95% of step time in "
                                                                          "forward, loss and backward (25% in the "
                                                                          "teacher's forward)"),
])
def test_the_verdict_names_the_phase_that_dominates(shares, expected):
    full = {name: shares.get(name, 0.0) for name in PHASES}
    assert verdict(full, None).startswith(expected)
    assert verdict(full, 0.42).endswith("; the GPU was busy 42% of the window")


def test_gpu_busy_time_counts_each_kernel_interval_once():
    from types import SimpleNamespace

    import torch

    from train.profiling import device_busy_seconds, union_length

    assert union_length([(0, 10), (5, 15), (20, 30), (22, 25)]) == 25  # overlaps (two streams) count once
    assert union_length([]) == 0

    def event(kind, start, end):
        return SimpleNamespace(device_type=kind, time_range=SimpleNamespace(start=start, end=end))

    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    # a CPU op spanning its kernels (its self_device_time_total would repeat them) and two kernels
    profiler = SimpleNamespace(events=lambda: [event(cpu, 0, 1_000_000), event(cuda, 100, 400_100),
                                               event(cuda, 500_000, 600_000)])
    assert device_busy_seconds(profiler, torch.device("cuda")) == 0.5
    assert device_busy_seconds(profiler, torch.device("cpu")) is None
