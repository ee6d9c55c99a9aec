"""Every training method by name (`--method`)."""
from __future__ import annotations

from train.hsakd_methods import HsakdOnline, HsakdStudent, HsakdTeacher
from train.methods import SLA, Baseline, Method, MethodOptions, MultiTask, SLASelfDistillation, TransformsAsAugmentation

METHODS: dict[str, type[Method]] = {m.name: m for m in (Baseline, TransformsAsAugmentation, MultiTask, SLA,
                                                         SLASelfDistillation, HsakdTeacher, HsakdStudent,
                                                         HsakdOnline)}


def build_method(name: str, options: MethodOptions) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](options)
