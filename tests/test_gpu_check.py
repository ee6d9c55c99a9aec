"""`make gpu-check` on a machine without a GPU: one line and exit 0; its dry run names every check; and the
gpu-marked tests it runs cover every loader and every family it promises."""
import subprocess
import sys

from conftest import REPO, run_child

from train import gpu_check


def test_without_a_cuda_device_it_checks_nothing_and_says_so(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "has_cuda", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: nothing checked"


def test_the_dry_run_prints_every_check_and_its_command(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for check in gpu_check.checks():
        assert check.name in out and " ".join(check.command) in out
    assert "-m gpu" in out and "--profile" in out and "torch.distributed.run" in out


def test_make_gpu_check_runs_the_check_here_too():
    done = run_child(["make", "-s", "gpu-check"], cwd=REPO, timeout=120)
    assert "no CUDA device: nothing checked" in done.stdout


def test_the_gpu_tests_cover_every_loader_and_family():
    listed = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q",
                             "-p", "no:cacheprovider", "tests/test_gpu.py"], cwd=REPO, capture_output=True, text=True,
                            timeout=120).stdout
    for loader in ("resident", "torch", "ffcv", "dali"):
        assert f"test_every_loader_trains_on_the_device[{loader}" in listed, listed
    for family in ("sla_sd", "hsakd_teacher", "maxl", "simclr", "swav", "moco_v3"):
        assert f"test_each_family_trains_an_epoch_on_the_device[{family}" in listed, listed
    for name in ("test_the_loss_falls_in_every_precision[fp16", "test_a_resumed_run_ends_with_the_weights",
                 "test_a_steady_step_makes_no_host_sync_on_the_device"):
        assert name in listed, listed


def test_the_install_check_refuses_a_build_the_driver_cannot_run(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(gpu_check, "driver_cuda_version", lambda: "12.8")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert gpu_check.main(["--install"]) == 1
    assert "CPU-only build" in capsys.readouterr().out
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert gpu_check.main(["--install"]) == 1
    assert "differ in major version" in capsys.readouterr().err
    monkeypatch.setattr(torch.version, "cuda", "12.9")
    assert gpu_check.main(["--install"]) == 1
    assert "newer than the driver" in capsys.readouterr().err
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.main(["--install"]) == 0


def test_checks_can_be_picked_and_share_one_time_budget(monkeypatch, capsys, tmp_path):
    assert gpu_check.main(["--dry-run", "--only", "profile,nccl"]) == 0
    out = capsys.readouterr().out
    assert "profile: --profile window" in out and "nccl: torchrun" in out and "bench step" not in out
    assert gpu_check.main(["--dry-run", "--only", "profil"]) == 2
    assert "unknown check(s) profil; valid: gpu-tests" in capsys.readouterr().err
    assert sum(check.timeout_s for check in gpu_check.checks()) > gpu_check.DEFAULT_BUDGET_S  # why a budget

    given = []  # each check gets its own limit or what is left of the budget, whichever is less
    monkeypatch.setattr(gpu_check, "has_cuda", lambda: True)
    monkeypatch.setattr(gpu_check, "OUT", tmp_path)
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda command, **kwargs: (
        given.append(kwargs.get("timeout")) or subprocess.CompletedProcess(command, 0, "1 passed", "")))
    monkeypatch.setattr(gpu_check, "driver_cuda_version", lambda: "12.8")
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    assert gpu_check.main(["--only", "gpu-tests,cuda-kernels", "--budget-s", "200"]) == 0
    assert 199 <= given[0] <= 200 and given[1] == 120  # 300 s capped at the 200 s budget; then its own 120 s
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget_s"] == 200 and report["driver"] == "12.8"
    assert report["packages"]["torch"] == torch.__version__ and report["packages"]["numba"]
