"""Runs that survive what a cluster does to them: a preemption signal mid-epoch (the run checkpoints its step and
continues exactly), a diverging loss (the run stops and keeps its last finite checkpoints), impossible settings
(one line before any work)."""
import json
import math
import signal
import sys

import pytest
import torch

from conftest import DIGITS_8PX, REPO, made_once, run_child
from two_rank_runs import output
from train.config import SETTING_LIMITS, TrainConfig
from train.main import main
from train.stopping import EXIT_DIVERGED, EXIT_PREEMPTED, RAISE_SIGNAL_AT

TINY = [*DIGITS_8PX, "--model", "resnet8", "--samples-per-class", "20", "--batch-size", "32", "--log-every", "4",
        "--epochs", "2"]  # 6 steps an epoch, 12 in all


def refuse_constants(name):
    raise ValueError(f"{name} is not JSON")


def records(run_dir) -> list[dict]:
    """metrics.jsonl read as strict JSON: a bare NaN or Infinity token fails here."""
    return [json.loads(line, parse_constant=refuse_constants)
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b) -> None:
    first, second = (torch.load(path, weights_only=True) for path in (a, b))
    assert first["step"] == second["step"]
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    for name, tensor in first["optimizer"]["state"].items():
        assert torch.equal(tensor["momentum_buffer"], second["optimizer"]["state"][name]["momentum_buffer"]), name


def signalled_env(at: str) -> dict:
    from conftest import subprocess_env

    return dict(subprocess_env(), **{RAISE_SIGNAL_AT: at})


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, worker_id):
    """TINY in one process (this one), never interrupted: what each signalled copy of it must end equal to."""
    def make(out):
        assert main([*TINY, "--out-dir", str(out), "--run-name", "straight"]) == 0

    return made_once(tmp_path_factory, worker_id, "straight-run", make) / "straight"


@pytest.mark.parametrize("signal_name,process", [("SIGTERM", "child"), ("SIGUSR1", "this")])
def test_a_preemption_signal_mid_epoch_checkpoints_that_step_and_resume_auto_continues_exactly(
        tmp_path, signal_name, process, straight_run, monkeypatch, capsys):
    """SIGTERM in a child process of its own (the exit status the shell sees); SIGUSR1, which takes the same path
    in train/stopping.py, in this process through main(), without two more interpreters' start."""
    argv = [*TINY, "--out-dir", str(tmp_path), "--run-name", "r"]

    def train(*extra, signal_at=None, expect=0) -> str:
        if process == "child":
            env = signalled_env(signal_at) if signal_at else None
            return run_child([sys.executable, str(REPO / "train" / "main.py"), *argv, *extra], expect=expect,
                             timeout=180, env=env).stdout
        with monkeypatch.context() as patch:
            if signal_at:
                patch.setenv(RAISE_SIGNAL_AT, signal_at)
            assert main([*argv, *extra]) == expect
        return capsys.readouterr().out

    stopped = train(signal_at=f"0:7:{signal_name}", expect=EXIT_PREEMPTED)  # step 7: the second epoch's first step
    assert f"stopped by {signal_name} at epoch 2 step 7; continue with --resume auto" in stopped
    checkpoint = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 7)
    stop = [r for r in records(tmp_path / "r") if r["kind"] == "stopped"]
    steps_per_epoch = json.loads((tmp_path / "r" / "config.json").read_text())["total_steps"] // 2
    assert steps_per_epoch == 6
    assert len(stop) == 1 and stop[0]["batches_done_in_epoch"] == 1 and stop[0]["exit_status"] == EXIT_PREEMPTED
    assert "continuing from" in train("--resume", "auto")
    same_weights(straight_run / "last.pt", tmp_path / "r" / "last.pt")
    summaries = [r for r in records(tmp_path / "r") if r["kind"] == "summary"]
    straight = [r for r in records(straight_run) if r["kind"] == "summary"]
    assert summaries[-1]["test"] == straight[-1]["test"] and summaries[-1]["completed"]


@pytest.mark.distributed
def test_under_torchrun_every_rank_stops_at_the_same_step_and_the_resumed_run_is_exact(quick_torchrun_verdicts,
                                                                                       two_rank_runs_directory):
    """tests/two_rank_runs.py's "stopped": only rank 1 is signalled (at its step 3), and both ranks stop after step
    4, the step that reads the all-reduce started after step 3; "resumed" continues both ranks from that checkpoint
    to the weights of the run that was never stopped, "straight"."""
    assert quick_torchrun_verdicts["runs"]["stopped"] == [EXIT_PREEMPTED, EXIT_PREEMPTED]
    assert quick_torchrun_verdicts["runs"]["resumed"] == [0, 0]
    assert "stopped by SIGTERM at epoch 1 step 4; continue with --resume auto" in output(two_rank_runs_directory,
                                                                                         "stopped")
    stop = [r for r in records(two_rank_runs_directory / "stopped") if r["kind"] == "stopped"]
    assert len(stop) == 1 and stop[0]["batches_done_in_epoch"] == 4  # the first epoch's step 4
    same_weights(two_rank_runs_directory / "straight" / "last.pt", two_rank_runs_directory / "stopped" / "last.pt")


def test_a_second_signal_while_the_checkpoint_is_written_changes_nothing(tmp_path, monkeypatch, capsys):
    from train import loop as main_module

    save = main_module.atomic_save

    def save_while_signalled(payload, path):
        signal.raise_signal(signal.SIGTERM)  # recorded, ignored: the save goes on
        save(payload, path)

    monkeypatch.setattr(main_module, "atomic_save", save_while_signalled)
    monkeypatch.setenv(RAISE_SIGNAL_AT, "0:3:SIGTERM")
    assert main([*TINY, "--out-dir", str(tmp_path), "--run-name", "r"]) == EXIT_PREEMPTED
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handlers are gone with it


def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_finite_checkpoints(tmp_path, capsys):
    """The first epoch trains at lr 0.1; at the second the schedule multiplies it by 10⁹ and the loss leaves the
    floats within a few steps."""
    argv = [*TINY, "--out-dir", str(tmp_path), "--run-name", "r", "--schedule", "multistep", "--lr-milestones", "0.5",
            "--lr-gamma", "1e9"]
    assert main(argv) == EXIT_DIVERGED
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1 and lines[0].startswith("stopped: non-finite loss at step ") and "lr 1e+08" in lines[0]
    checkpoint = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert checkpoint["step"] == 6  # the first epoch's, the last finite one
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in best.values() if t.is_floating_point())
    summary = [r for r in records(tmp_path / "r") if r["kind"] == "summary"]
    assert len(summary) == 1 and summary[0]["completed"] is False and summary[0]["exit_status"] == EXIT_DIVERGED
    assert int(summary[0]["stopped_by"].split()[-1]) > 6
    assert any(value is None for value in summary[0]["recent_losses"].values())  # NaN as null


def out_of_range(limit):
    """A value the limit refuses, and the flag's text for it."""
    if limit.low is not None:
        return limit.low if limit.open_low else limit.low - 1
    return limit.high + 1 if not limit.open_high else limit.high


@pytest.mark.parametrize("name", sorted(SETTING_LIMITS))
def test_every_numeric_setting_out_of_range_is_one_line_naming_the_flag(name, tmp_path, capsys):
    limit = SETTING_LIMITS[name]
    value = out_of_range(limit)
    kind = type(getattr(TrainConfig, name) if not isinstance(getattr(TrainConfig, name), tuple) else 0.5)
    text = f"{kind(value):g}" if kind is not int else str(int(value))
    flag = "--" + name.replace("_", "-")
    assert main([flag, text, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag} ") and "out of range" in err and limit.describe() in err
    assert "\n" not in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size 0 is out of range; it must be ≥ 1"),
    (["--epochs", "-1"], "--epochs -1 is out of range; it must be ≥ 1"),
    (["--val-split", "2.5"], "--val-split 2.5 is neither a fraction"),
    (["--lr-milestones", "0.75,0.5"], "--lr-milestones 0.75,0.5 must increase"),
    (["--lr", "nan"], "--lr nan is out of range"),
    (["--model", "vgg16", "--image-size", "8"],
     "--image-size 8 is too small for --model vgg16: its forward pass fails"),
])
def test_impossible_settings_named_in_the_issue_are_refused(argv, message, tmp_path, capsys):
    assert main([*argv, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_limits_describe_their_ranges():
    assert SETTING_LIMITS["momentum"].describe() == "≥ 0 and < 1"
    assert SETTING_LIMITS["temperature"].describe() == "> 0"
    assert not math.isnan(out_of_range(SETTING_LIMITS["lr_milestones"]))
