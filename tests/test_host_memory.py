"""train/host_memory.py: with freed memory retained, a large tensor allocated again after being freed is not
page-faulted anew (once glibc's bins hold a block that fits: its memalign, which PyTorch's CPU allocator
calls, leaves some freed blocks unused at first); with glibc's defaults each one is.

The page faults are counted in a fresh interpreter: what earlier tests of this process left in the heap
(training runs retain freed memory) decides whether a 40 MB allocation is served from a free chunk of the
heap or by its own mmap, so measuring in the test process would depend on the test order."""
import json
import os
import platform
import resource
import sys
from pathlib import Path

import pytest

from conftest import run_child
from train.config import config_from_namespace, parse_arguments

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")
PAGES = 40 * 2**20 // resource.getpagesize()  # a 40 MB tensor: over glibc's largest mmap threshold (32 MB)
REPOSITORY = Path(__file__).resolve().parents[1]

MEASUREMENT = """
import json, resource, sys
import torch
from train.host_memory import retain_freed_memory, return_freed_memory

def allocation_faults(cycles, pages):
    faults = []
    for _ in range(cycles):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(pages * resource.getpagesize() // 4).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults

pages = int(sys.argv[1])
assert return_freed_memory()
default_faults = allocation_faults(4, pages)
assert retain_freed_memory()
print(json.dumps({"default": default_faults, "retained": allocation_faults(24, pages)}))
"""


def test_retained_memory_is_reused_without_page_faults():
    measured = run_child([sys.executable, "-c", MEASUREMENT, str(PAGES)], cwd=REPOSITORY, timeout=300,
                         env=dict(os.environ))  # this environment, as the training runs it measures have
    faults = json.loads(measured.stdout.strip().splitlines()[-1])
    assert min(faults["default"]) > PAGES // 2, f"glibc's default: {faults['default']} faults for {PAGES} pages"
    assert max(faults["retained"][-4:]) < PAGES // 10, f"retained: {faults['retained']} faults for {PAGES} pages"


def test_the_setting_is_on_by_default_and_can_be_turned_off():
    assert config_from_namespace(parse_arguments([])).retain_host_memory
    assert not config_from_namespace(parse_arguments(["--no-retain-host-memory"])).retain_host_memory
