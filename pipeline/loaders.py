"""`--loader` names → loader objects. Every loader yields `pipeline.batch.Batch` and has
`set_epoch(epoch)` and `len()` (steps per epoch, equal on every rank)."""
from __future__ import annotations

from .batch import LoaderSettings
from .datasets import ImageSet

LOADERS = ("resident", "torch", "dali", "ffcv")


def build_loader(name: str, split: ImageSet, settings: LoaderSettings, *, split_name: str = "train"):
    """`split_name` names the split's cached .beton for ffcv (e.g. "digits-train")."""
    if name == "resident":
        from .resident import ResidentLoader

        return ResidentLoader(split, settings)
    if name == "torch":
        from .torch_loader import TorchLoader

        return TorchLoader(split, settings)
    if name == "dali":
        from .dali_loader import DaliLoader

        return DaliLoader(split, settings, from_files=bool(split.files))
    if name == "ffcv":
        from .ffcv_loader import FfcvLoader

        return FfcvLoader(split, settings, split_name)
    raise ValueError(f"unknown loader {name!r}; valid: {', '.join(LOADERS)}")
