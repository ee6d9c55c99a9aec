"""Transformation families of docs/methods.md: name -> the M views, each a (quarter turns, channel order).

View j of a family is `rot90(x, k=quarter_turns[j])` over (H, W) followed by the channel
reordering `out[c] = in[channel_order[j][c]]`. Row b·M+j of a batch holds view j of image b.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

IDENTITY_ORDER = (0, 1, 2)
LEXICOGRAPHIC_ORDERS = tuple(itertools.permutations(IDENTITY_ORDER))  # RGB, RBG, GRB, GBR, BRG, BGR
CYCLIC_ORDERS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))  # RGB, GBR, BRG


@dataclass(frozen=True)
class TransformFamily:
    name: str
    quarter_turns: tuple[int, ...]  # per view: counter-clockwise 90° turns over (H, W)
    channel_orders: tuple[tuple[int, int, int], ...]  # per view: source channel of each output channel

    @property
    def num_transforms(self) -> int:
        return len(self.quarter_turns)

    @property
    def rotates(self) -> bool:
        return any(turns % 2 for turns in self.quarter_turns)

    @property
    def permutes_channels(self) -> bool:
        return any(order != IDENTITY_ORDER for order in self.channel_orders)


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


def check_family_fits(family: TransformFamily, height: int, width: int, channels: int) -> None:
    """Raise a clear error where a family is undefined for an image shape (docs/methods.md)."""
    if family.rotates and height != width:
        raise ValueError(
            f"transformation family {family.name!r} rotates by 90°, which needs square images; "
            f"got H={height}, W={width}"
        )
    if family.permutes_channels and channels != 3:
        raise ValueError(
            f"transformation family {family.name!r} permutes colour channels, which needs 3 channels; got {channels}"
        )
