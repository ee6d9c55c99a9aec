"""Counts, on any device, the operations that make a CUDA host wait for the GPU, and the tensors a step builds
from host data (each a host-to-device copy on a GPU). On a CPU nothing waits, which is how such operations
pile up unseen; counted here, a CPU test can hold every method to a budget (tests/test_host_syncs.py), as
`torch.cuda.set_sync_debug_mode` does on a device (`make gpu-check`).

    syncs:  .item(), bool(), int(), float() of a tensor (aten._local_scalar_dense), .tolist(), .cpu(),
            nonzero, masked_select, unique, boolean-mask indexing, repeat_interleave by a tensor of counts
    fresh:  torch.tensor, torch.as_tensor, torch.from_numpy (aten.lift_fresh)
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
               "aten._unique2.default", "aten.unique_dim.default", "aten.unique_consecutive.default",
               "aten.repeat_interleave.Tensor"}
SYNCING_METHODS = {"tolist", "cpu"}


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in SYNCING_OPS:
            self.counts[f"sync {name.removeprefix('aten.')}"] += 1
        elif name == "aten.index.Tensor" and any(isinstance(index, torch.Tensor) and index.dtype == torch.bool
                                                  for index in args[1]):
            self.counts["sync boolean-mask index"] += 1
        elif name == "aten.lift_fresh.default":
            self.counts["fresh host tensor"] += 1
        return func(*args, **(kwargs or {}))


class _Functions(TorchFunctionMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING_METHODS:
            self.counts[f"sync .{name}()"] += 1
        return func(*args, **(kwargs or {}))


class HostSyncCounter:
    """`with HostSyncCounter() as counter: ...`, then `counter.syncs`, `counter.fresh` and `counter.counts`."""

    def __init__(self):
        self.counts: Counter = Counter()
        self._modes = (_Functions(self.counts), _Dispatch(self.counts))

    def __enter__(self) -> "HostSyncCounter":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def syncs(self) -> int:
        return sum(n for name, n in self.counts.items() if name.startswith("sync"))

    @property
    def fresh(self) -> int:
        return self.counts["fresh host tensor"]
