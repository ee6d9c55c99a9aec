"""`make gpu-check` on a machine without a GPU: one line and exit 0; its dry run names every check; and the
gpu-marked tests it runs cover every loader and every family it promises."""
import subprocess
import sys

import pytest

from conftest import REPO, run_child

from train.commands import gpu_check


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
    monkeypatch.setattr(gpu_check, "ensure_imports", lambda *args: (None, []))  # the packages import as they are
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    assert gpu_check.main(["--only", "gpu-tests,cuda-kernels", "--budget-s", "200"]) == 0
    assert 199 <= given[0] <= 200 and given[1] == 120  # 300 s capped at the 200 s budget; then its own 120 s
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget_s"] == 200 and report["driver"] == "12.8"
    assert report["packages"]["torch"] == torch.__version__ and report["packages"]["numba"]


def fake_wheel(folder, name: str, version: str, module: str) -> None:
    """A minimal pure-Python wheel: `module` with one constant, and the metadata pip reads."""
    import base64
    import hashlib
    import zipfile

    distribution = name.replace("-", "_")
    info = f"{distribution}-{version}.dist-info"
    files = {f"{module}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()}"
              f",{len(text.encode())}" for path, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{distribution}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def test_make_wheelhouse_downloads_the_checks_wheels_offline_from_a_local_folder(tmp_path):
    """`make wheelhouse` against a local folder with no index: every requirement of WHEELS is resolved (numpy
    below 2.5 although 2.5 is offered), for the Python version asked, into the folder asked."""
    index, wheelhouse = tmp_path / "index", tmp_path / "wheelhouse"
    index.mkdir()
    for name, version in [("numpy", "2.4.0"), ("numpy", "2.5.0"), ("numba-cuda", "0.30.4"), ("numba-cuda", "0.31.0"),
                          ("pytest", "9.0.0"), ("pluggy", "1.6.0"), ("iniconfig", "2.1.0"), ("packaging", "25.0")]:
        fake_wheel(index, name, version, name.replace("-", "_"))
    done = run_child(["make", "-s", "wheelhouse", "PYTHON_VERSION=3.12", f"WHEELHOUSE_DIR={wheelhouse}",
                      f"FIND_LINKS={index}"], cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in wheelhouse.glob("*.whl")) == [
        "iniconfig-2.1.0-py3-none-any.whl", "numba_cuda-0.30.4-py3-none-any.whl", "numpy-2.4.0-py3-none-any.whl",
        "packaging-25.0-py3-none-any.whl", "pluggy-1.6.0-py3-none-any.whl", "pytest-9.0.0-py3-none-any.whl"]
    assert "6 wheels" in done.stdout
    assert gpu_check.main(["--download-wheels", str(wheelhouse), "--python-version", "python3"]) == 2


def test_a_failed_import_is_mended_from_the_wheelhouse_in_a_folder_of_its_own(tmp_path):
    """The checks' imports fail: without a wheelhouse, one error naming the import and `make wheelhouse`; with
    one, its wheels go into a private site-packages that the checks' children import from, and nowhere else."""
    wheelhouse, site = tmp_path / "wheelhouse", tmp_path / "site-packages"
    modules = ("sla_gpu_check_probe",)
    with pytest.raises(ValueError, match="No module named 'sla_gpu_check_probe'.*make wheelhouse PYTHON_VERSION="):
        gpu_check.ensure_imports(modules, wheelhouse, site)
    wheelhouse.mkdir()
    fake_wheel(wheelhouse, "sla-gpu-check-probe", "1.0", "sla_gpu_check_probe")
    assert gpu_check.ensure_imports(modules, wheelhouse, site) == (site, ["sla_gpu_check_probe-1.0-py3-none-any.whl"])
    assert gpu_check.import_problem(modules, site) is None and gpu_check.import_problem(modules) is not None
    assert gpu_check.ensure_imports(("json",), wheelhouse, tmp_path / "unused") == (None, [])
    assert not (tmp_path / "unused").exists()
