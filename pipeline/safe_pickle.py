"""Read the CIFAR python pickles, which users download, without letting them run code.

`pickle.load` calls whatever callable a file names; this unpickler resolves only the few globals
that CIFAR's batch files use to rebuild numpy arrays and scalars, and refuses every other one.
(torch's weights_only unpickler does the same job for checkpoints but does not rebuild numpy arrays.)
"""
from __future__ import annotations

import codecs
import pickle
from typing import BinaryIO

import numpy as np
from numpy._core.multiarray import _reconstruct, scalar

ALLOWED_GLOBALS = {  # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles written by Python 3 store bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR files hold only arrays, lists, "
                                     "bytes and numbers, and anything else could run code")


def load_restricted(file: BinaryIO, encoding: str = "bytes"):
    """pickle.load restricted to plain data and numpy arrays (Python 2 pickles decoded with `encoding`)."""
    return RestrictedUnpickler(file, encoding=encoding).load()
