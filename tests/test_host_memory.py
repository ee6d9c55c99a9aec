"""train/host_memory.py: with freed memory retained, a large tensor allocated again after being freed is not
page-faulted anew (once glibc's bins hold a block that fits: its memalign, which PyTorch's CPU allocator
calls, leaves some freed blocks unused at first); with glibc's defaults each one is."""
import platform
import resource

import pytest
import torch

from train.config import config_from_namespace, parse_arguments
from train.host_memory import retain_freed_memory, return_freed_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")
PAGES = 40 * 2**20 // resource.getpagesize()  # a 40 MB tensor: over glibc's largest mmap threshold (32 MB)


def allocation_faults(cycles: int) -> list[int]:
    """Minor page faults of each of `cycles` rounds of allocating, writing and freeing a 40 MB tensor."""
    faults = []
    for _ in range(cycles):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(PAGES * resource.getpagesize() // 4).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


@pytest.fixture
def default_allocator_afterwards():
    yield
    return_freed_memory()


def test_retained_memory_is_reused_without_page_faults(default_allocator_afterwards):
    assert return_freed_memory()
    default_faults = allocation_faults(4)
    assert retain_freed_memory()
    retained_faults = allocation_faults(24)
    assert min(default_faults) > PAGES // 2, f"glibc's default: {default_faults} faults for {PAGES} pages"
    assert max(retained_faults[-4:]) < PAGES // 10, f"retained: {retained_faults} faults for {PAGES} pages"


def test_the_setting_is_on_by_default_and_can_be_turned_off():
    assert config_from_namespace(parse_arguments([])).retain_host_memory
    assert not config_from_namespace(parse_arguments(["--no-retain-host-memory"])).retain_host_memory
