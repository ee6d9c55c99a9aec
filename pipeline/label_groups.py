"""Primary labels made of groups of the data's classes (`--primary-labels`), as MAXL's experiments use:
CIFAR-100's 20 superclasses over its 100 classes, or any grouping of class ids.

Under a grouping, an image's label is its group, and its original class is kept as a fine label
numbered in block order: group g owns fine labels start_g .. start_g + size_g − 1, groups in order and
each group's classes in the order given (the hierarchy ψ of docs/methods.md, "MAXL")."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .image_set import DataError, DatasetSplits, ImageSet


def parse_groups(spec: str, train_full: ImageSet) -> tuple[list[list[int]], list[str]]:
    """`coarse` (the archive's superclasses) or class ids grouped as "0,2,4/1,3/5,6,7,8,9"; every class
    of the data in exactly one group. Returns the groups and their names."""
    num_classes = train_full.num_classes
    if spec == "coarse":
        if train_full.coarse_labels is None:
            raise DataError("--primary-labels coarse needs superclasses, which only CIFAR-100 has here; group "
                            "class ids instead, e.g. --primary-labels 0,1,2/3,4,5/6,7,8,9")
        pairs = np.unique(np.stack([train_full.coarse_labels, train_full.labels]), axis=1)
        groups = [sorted(pairs[1][pairs[0] == coarse].tolist()) for coarse in np.unique(pairs[0])]
        names = list(train_full.coarse_names) or [f"group{g}" for g in range(len(groups))]
        return groups, names
    try:
        groups = [[int(part) for part in group.split(",") if part.strip()] for group in spec.split("/")]
    except ValueError:
        raise DataError(f"--primary-labels must be fine, coarse, or class ids grouped like 0,1/2,3; "
                        f"got {spec!r}") from None
    flat = [c for group in groups for c in group]
    if any(not group for group in groups) or sorted(flat) != list(range(num_classes)):
        missing = sorted(set(range(num_classes)) - set(flat))
        repeated = sorted({c for c in flat if flat.count(c) > 1})
        outside = sorted(c for c in set(flat) if not 0 <= c < num_classes)
        raise DataError(f"--primary-labels {spec!r} must put each of the {num_classes} classes in exactly one "
                        f"non-empty group (missing {missing}, repeated {repeated}, out of range {outside})")
    names = ["+".join(train_full.class_names[c] for c in group) for group in groups]
    return groups, names


def regroup(image_set: ImageSet, groups: list[list[int]], names: list[str]) -> ImageSet:
    group_of = np.empty(sum(map(len, groups)), dtype=np.int64)
    fine_of = np.empty_like(group_of)
    for fine_index, (group, cls) in enumerate((g, c) for g, members in enumerate(groups) for c in members):
        group_of[cls], fine_of[cls] = group, fine_index
    return replace(image_set, labels=group_of[image_set.labels], num_classes=len(groups), class_names=list(names),
                   fine_labels=fine_of[image_set.labels])


def group_primary_labels(splits: DatasetSplits, spec: str, train_full: ImageSet) -> DatasetSplits:
    groups, names = parse_groups(spec, train_full)
    return replace(splits, train=regroup(splits.train, groups, names), val=regroup(splits.val, groups, names),
                   test=regroup(splits.test, groups, names), group_sizes=tuple(len(g) for g in groups))
