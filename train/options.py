"""How a setting is declared: a dataclass field whose metadata holds its help text, its allowed range ("limit")
and whether a resume must match it ("resume"). The core settings live in train/config.py; each method family
declares its own as a small dataclass beside its code, which TrainConfig composes."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AT_LEAST_0", "AT_LEAST_1", "DECAY", "FRACTION", "POSITIVE", "Limit", "field"]


@dataclass(frozen=True)
class Limit:
    """The range of a numeric setting: an end is None where open; `open_low`/`open_high` refuse the end itself."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.open_high and value == self.high))

    def describe(self) -> str:
        low = None if self.low is None else f"{'>' if self.open_low else '≥'} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.open_high else '≤'} {self.high:g}"
        return " and ".join(part for part in (low, high) if part)


AT_LEAST_0, AT_LEAST_1, POSITIVE = Limit(0), Limit(1), Limit(0, open_low=True)
FRACTION = Limit(0, 1, open_low=True)  # (0, 1]
DECAY = Limit(0, 1, open_high=True)  # [0, 1)
