"""train/machine_cache.py: the measured-peak cache keeps machines apart (a home directory shared by a cluster's
nodes)."""
import torch

from train import machine_cache


def test_the_peak_cache_key_names_the_cpu_and_its_bf16_units(monkeypatch, tmp_path):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # a cap would hide the AMX this test pretends to have
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


def test_a_cpu_that_emulates_bf16_takes_its_fp32_rate_as_the_bf16_peak_without_timing_bf16(monkeypatch):
    """Zen 3 and other CPUs without AVX512-BF16 or AMX: timing emulated bf16 products took minutes there; the
    fp32 rate bounds them (each product is widened to fp32), so that is what is measured, and named."""
    from train import mfu

    monkeypatch.setattr(mfu, "cpu_bf16_units", lambda: [])
    timed_dtypes = []
    real_best_rate = mfu.best_rate

    def recording_best_rate(operation, flops, device, **kwargs):
        timed_dtypes.append(operation().dtype)
        return real_best_rate(operation, flops, device, repeats=1)

    monkeypatch.setattr(mfu, "best_rate", recording_best_rate)
    peak, source = mfu.measured_peak(torch.device("cpu"), "bf16")
    assert timed_dtypes == [torch.float32, torch.float32] and peak > 0
    assert "bf16 is emulated on this CPU" in source and "fp32 matmul" in source
    monkeypatch.setattr(mfu, "cpu_bf16_units", lambda: ["amx"])
    assert mfu.measured_precision(torch.device("cpu"), "bf16") == "bf16"


def test_a_timed_peak_stops_at_its_time_budget():
    from train import mfu

    calls = []
    mfu.best_rate(lambda: calls.append(__import__("time").sleep(0.05)), 1.0, torch.device("cpu"), repeats=100,
                  budget_s=0.2)
    assert 4 <= len(calls) <= 7  # the warm-up, then repeats until 0.2 s are spent: ~5 of 50 ms, not 100


def test_onednn_caps_below_avx512_bf16_turn_native_bf16_off(monkeypatch):
    for cap, allowed in (("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True), ("DEFAULT", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert machine_cache.onednn_allows("avx512_bf16") is allowed, cap
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert not machine_cache.onednn_allows("amx")
