"""train/machine_cache.py: the measured-peak cache keeps machines apart (a home directory shared by a cluster's
nodes)."""
import torch

from train import machine_cache


def test_the_peak_cache_key_names_the_cpu_and_its_bf16_units(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    with_amx = machine_cache.machine_key("bf16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    without_amx = machine_cache.machine_key("bf16")
    assert with_amx != without_amx and "amx" in with_amx.split("|")[0]
    assert machine_cache.machine_key("bf16") != machine_cache.machine_key("fp32")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    assert machine_cache.cpu_model().startswith("Example CPU 9000")
    # two generations under one plain name (a VM's "AMD EPYC") differ by their family and model numbers
    names = []
    for family, model in (("25", "17"), ("26", "2")):
        cpuinfo.write_text(f"processor\t: 0\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: AMD EPYC\n\n"
                           f"processor\t: 1\ncpu family\t: 99\n")
        names.append(machine_cache.cpu_model())
    assert names[0].startswith("AMD EPYC+family 25 model 17") and names[1].startswith("AMD EPYC+family 26 model 2")


def test_entries_of_one_kind_keep_each_other_and_a_read_only_home_is_no_error(monkeypatch, tmp_path):
    monkeypatch.setattr(machine_cache, "CACHE_DIR", tmp_path / "cache")
    assert machine_cache.load("peak_flops") == {}
    machine_cache.store("peak_flops", "a", [1.0, "x"])
    machine_cache.store("peak_flops", "b", [2.0, "y"])
    assert machine_cache.load("peak_flops") == {"a": [1.0, "x"], "b": [2.0, "y"]}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["peak_flops.json"]  # no temporary left
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(machine_cache, "CACHE_DIR", blocker / "cache")  # cannot be created
    machine_cache.store("peak_flops", "c", [3.0, "z"])
    assert machine_cache.load("peak_flops") == {}


def test_an_fp32_run_on_a_gpu_is_measured_against_the_tf32_peak_while_tf32_is_on():
    from train import mfu

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: convolutions on TF32
        assert mfu.datasheet_precision("fp32") == "tf32" and mfu.datasheet_precision("bf16") == "bf16"
        assert mfu.datasheet_peak("NVIDIA H100 80GB HBM3", "tf32")[0] == 495e12
        torch.backends.cudnn.allow_tf32 = False
        assert mfu.datasheet_precision("fp32") == "fp32"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    for _, peaks in mfu.GPU_PEAKS:  # TF32 sits between the plain fp32 rate and the bf16 one on every variant
        assert peaks["fp32"] < peaks["tf32"] < peaks["bf16"]
