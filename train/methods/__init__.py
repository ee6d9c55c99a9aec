"""Every training method by name (`--method`): one module per family, one line each here.

A new method is a subclass of `Method` (train/methods/base.py) in its family's module plus its line
in METHODS; its options are a dataclass beside it (e.g. sla.py's SlaOptions) that train/config.py:TrainConfig
composes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from train.methods.base import Method
from train.methods.baselines import Baseline, MultiTask, TransformsAsAugmentation
from train.methods.contrastive import BYOL, MocoV2, MocoV3, SimCLR, SimclrV2
from train.methods.hsakd import HsakdOnline, HsakdStudent, HsakdTeacher, PlainKD
from train.methods.infomax import DeepInfomax
from train.methods.maxl import Maxl, MaxlHuman, MaxlRandom
from train.methods.pretrained import LinearEval
from train.methods.sla import SLA, SLASelfDistillation
from train.methods.swav import Swav

if TYPE_CHECKING:
    from train.config import TrainConfig

METHODS: dict[str, type[Method]] = {method.name: method for method in (
    Baseline,
    TransformsAsAugmentation,
    MultiTask,
    SLA,
    SLASelfDistillation,
    HsakdTeacher,
    HsakdStudent,
    HsakdOnline,
    PlainKD,
    Maxl,
    MaxlHuman,
    MaxlRandom,
    SimCLR,
    SimclrV2,
    MocoV2,
    MocoV3,
    BYOL,
    DeepInfomax,
    Swav,
    LinearEval,
)}


def build_method(config: TrainConfig) -> Method:
    """The method `config.method` names, its settings checked (before any data is read)."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; valid: {', '.join(METHODS)}")
    return METHODS[config.method](config)


__all__ = ["METHODS", "Method", "build_method"]
