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


def cpu_bf16_units() -> list[str]:
    """The CPU's native bf16 units that torch.cpu's own CPUID probes find: avx512_bf16, amx."""
    return [unit for unit, probe in CPU_BF16_UNITS if getattr(torch.cpu, probe, lambda: False)()]


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
