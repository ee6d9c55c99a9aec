"""Measurements kept per machine: a CPU's peak FLOP rate (train/mfu.py), which only MFU, a reported figure,
reads: no result depends on it. One JSON file per kind under ~/.cache/sla-trainer (XDG_CACHE_HOME),
each entry keyed by the CPU (model name, family and model numbers, bf16 units), the core and thread counts and
torch's version, so that a home directory shared by different machines keeps their figures apart. Writes
replace the file atomically; where the home is read-only, the next run measures again."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sla-trainer"
CPU_BF16_UNITS = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported"))


# oneDNN's instruction sets in its own order (ONEDNN_MAX_CPU_ISA's values); bf16 runs natively from AVX512_CORE_BF16
# on, and on AMX tiles from AVX512_CORE_AMX on. A cap below those makes oneDNN emulate bf16 whatever the CPU has.
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16")
ISA_NEEDED = {"avx512_bf16": "AVX512_CORE_BF16", "amx": "AVX512_CORE_AMX"}


def onednn_allows(unit: str) -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA), where set, lets oneDNN use `unit`."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap not in ONEDNN_ISAS:  # unset, DEFAULT or unknown: no cap
        return True
    return ONEDNN_ISAS.index(cap) >= ONEDNN_ISAS.index(ISA_NEEDED[unit])


def cpu_bf16_units() -> list[str]:
    """The CPU's native bf16 units that torch.cpu's own CPUID probes find (avx512_bf16, amx) and that oneDNN may
    use: ONEDNN_MAX_CPU_ISA=AVX2 makes a Zen 4 or Sapphire Rapids compute bf16 as a Zen 3 does, emulated."""
    return [unit for unit, probe in CPU_BF16_UNITS
            if getattr(torch.cpu, probe, lambda: False)() and onednn_allows(unit)]


def cpu_model() -> str:
    """The CPU's model name, family and model numbers (Linux: /proc/cpuinfo; platform.processor() is empty
    there; a VM's name can be as plain as "AMD EPYC" for two generations) and the bf16 units PyTorch finds."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block is enough
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    numbers = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    return "+".join([name, *numbers, *cpu_bf16_units()])


def machine_key(*extra: str) -> str:
    return "|".join([cpu_model(), str(os.cpu_count()), str(torch.get_num_threads()), torch.__version__, *extra])


def load(kind: str) -> dict:
    """Every machine's entries of one kind ({} when there is no readable file)."""
    path = CACHE_DIR / f"{kind}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def store(kind: str, key: str, value) -> None:
    """Adds or replaces one entry, keeping the others (another process's entries written meanwhile too)."""
    path = CACHE_DIR / f"{kind}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({**load(kind), key: value}))
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only home: measure again next time
