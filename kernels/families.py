"""Transformation families of docs/methods.md: name -> the M views, each a (quarter turns, channel order).

View j of a family is `rot90(x, k=quarter_turns[j])` over (H, W) followed by the channel
reordering `out[c] = in[channel_order[j][c]]`. Row b·M+j of a batch holds view j of image b.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

IDENTITY_ORDER = (0, 1, 2)
LEXICOGRAPHIC_ORDERS = tuple(itertools.permutations(IDENTITY_ORDER))  # RGB, RBG, GRB, GBR, BRG, BGR
CYCLIC_ORDERS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))  # RGB, GBR, BRG


@dataclass(frozen=True)
class TransformFamily:
    name: str
    quarter_turns: tuple[int, ...]  # per view: counter-clockwise 90° turns over (H, W)
    channel_orders: tuple[tuple[int, int, int], ...]  # per view: source channel of each output channel
    # derived once (plain fields: the per-step code reads them without a call)
    num_transforms: int = field(init=False)  # M
    rotates: bool = field(init=False)  # some view turns by an odd number of quarters: needs square images
    permutes_channels: bool = field(init=False)  # some view reorders channels: needs 3 of them

    def __post_init__(self):
        object.__setattr__(self, "num_transforms", len(self.quarter_turns))
        object.__setattr__(self, "rotates", any(turns % 2 for turns in self.quarter_turns))
        object.__setattr__(self, "permutes_channels", any(order != IDENTITY_ORDER for order in self.channel_orders))


def _product(name: str, turns: tuple[int, ...], orders) -> TransformFamily:
    # j = rot_index · P + perm_index (docs/methods.md): rotation is the slow index.
    pairs = [(t, o) for t in turns for o in orders]
    return TransformFamily(name, tuple(t for t, _ in pairs), tuple(o for _, o in pairs))


FAMILIES: dict[str, TransformFamily] = {
    family.name: family
    for family in (
        _product("none", (0,), (IDENTITY_ORDER,)),
        _product("rotation", (0, 1, 2, 3), (IDENTITY_ORDER,)),
        _product("rotation2", (0, 2), (IDENTITY_ORDER,)),
        _product("color_perm", (0,), LEXICOGRAPHIC_ORDERS),
        _product("color_perm3", (0,), CYCLIC_ORDERS),
        _product("rot_color_perm6", (0, 2), CYCLIC_ORDERS),
        _product("rot_color_perm12", (0, 1, 2, 3), CYCLIC_ORDERS),
        _product("rot_color_perm24", (0, 1, 2, 3), LEXICOGRAPHIC_ORDERS),
    )
}


def get_family(name: str) -> TransformFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown transformation family {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]
