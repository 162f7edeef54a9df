"""The numbers the variance-shift paper reports, read from ``paper_numbers.toml`` with their source.

The chapters quote the paper only through :func:`paper_number`, so a correction is made once, in
the data file, and every figure, table and sentence follows::

    from bncourse.lab.paper_numbers import paper_number
    acc = paper_number("densenet_c100_no_dropout_acc")
    acc.value, acc.source        # 77.42, "Figure 1, page 1 (arXiv v1)"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["PaperNumber", "paper_number", "paper_numbers"]

_RELIABILITY = ("primary", "secondary")


@dataclass(frozen=True)
class PaperNumber:
    """One reported value (or range ``low``-``high``), its unit, where it is in the paper and how sure."""

    name: str
    unit: str
    source: str
    reliability: str
    what: str
    value: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def is_range(self) -> bool:
        """Whether the paper reports a range rather than one value."""
        return self.value is None

    def text(self, digits: int | None = None) -> str:
        """The number as the paper gives it: ``"77.42"`` or ``"2.6 to 3.8"``."""
        f = (lambda v: f"{v:g}") if digits is None else (lambda v: f"{v:.{digits}f}")
        return f"{f(self.low)} to {f(self.high)}" if self.is_range else f(self.value)


def _parse(name: str, entry: dict) -> PaperNumber:
    missing = {"unit", "source", "reliability", "what"} - set(entry)
    if missing:
        raise ValueError(f"paper number {name!r} lacks {sorted(missing)}")
    if entry["reliability"] not in _RELIABILITY:
        raise ValueError(f"paper number {name!r}: reliability must be one of {_RELIABILITY}")
    has_value = "value" in entry
    has_range = "low" in entry and "high" in entry
    if has_value == has_range:
        raise ValueError(f"paper number {name!r} needs either value or low and high")
    numbers = {k: float(entry[k]) for k in ("value", "low", "high") if k in entry}
    if has_range and numbers["low"] > numbers["high"]:
        raise ValueError(f"paper number {name!r}: low exceeds high")
    text = {k: str(entry[k]) for k in ("unit", "source", "reliability", "what")}
    return PaperNumber(name=name, **text, **numbers)


@lru_cache(maxsize=1)
def paper_numbers() -> dict[str, PaperNumber]:
    """Every entry of ``paper_numbers.toml``, by name."""
    raw = tomllib.loads(resources.files("bncourse.lab").joinpath("paper_numbers.toml").read_text())
    return {name: _parse(name, entry) for name, entry in raw.items()}


def paper_number(name: str) -> PaperNumber:
    """The entry ``name`` of ``paper_numbers.toml``; an unknown name is a ValueError listing the known."""
    numbers = paper_numbers()
    if name not in numbers:
        raise ValueError(f"unknown paper number {name!r}; known: {', '.join(sorted(numbers))}")
    return numbers[name]
