"""train/mfu.py: the measured-peak cache keeps machines apart (a home directory shared by a cluster's nodes)."""
import torch

from train import mfu


def test_the_peak_cache_key_names_the_cpu_and_its_bf16_units(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    with_amx = mfu._cpu_key("bf16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    without_amx = mfu._cpu_key("bf16")
    assert with_amx != without_amx and "amx" in with_amx.split("|")[0]
    assert mfu._cpu_key("bf16") != mfu._cpu_key("fp32")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    assert mfu.cpu_model().startswith("Example CPU 9000")
