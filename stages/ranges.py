"""What each numeric config field accepts, declared beside the field, and the one check of it.

A field states its range where it is declared::

    model_dim: int = ranged(512, ge=1)
    ema_decay: float = ranged(0.0, ge=0, lt=1)
    qat_bits: int = ranged(0, ge=2, le=8, off=0)   # 0 switches the feature off

and every config's ``__post_init__`` starts with ``check_ranges(self)``; rules that relate two
fields (``model_dim`` divisible by ``num_heads``) follow it as explicit checks that raise
``ConfigError`` too. ``None`` (an optional field left unset) is always accepted; a tuple's range
applies to each item.

This lives apart from ``stages/config.py`` because ``ModelConfig`` ships inside every artifact
(``stages/artifact/bundle.py`` follows relative imports), and each shipped byte counts against the
16,000,000: so it is small and stdlib-only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import GolfError

RANGE = "range"  # the key of a field's range in its dataclass metadata


class ConfigError(GolfError, ValueError):
    """A config value the config refuses, naming the field (dotted once the config is nested)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason

    def under(self, group: str) -> "ConfigError":
        """The same error, its key prefixed with the group that holds the config (``model``)."""
        return ConfigError(f"{group}.{self.key}", self.reason)


@dataclass(frozen=True)
class Range:
    """Bounds on a number: any of >= ge, > gt, <= le, < lt, plus an ``off`` value outside them."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    off: float | None = None

    def contains(self, value) -> bool:
        if self.off is not None and value == self.off:
            return True
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            bounds = f"in {low}, {high}"
        elif low:
            bounds = f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        else:
            bounds = f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return bounds if self.off is None else f"{self.off:g} (off) or {bounds}"

    def check(self, name: str, value) -> None:
        """Raise ConfigError unless ``value`` (each item of a tuple, or of a list read from JSON) is a
        number in range, or None."""
        if value is None:
            return
        several = isinstance(value, (tuple, list))
        for item in value if several else (value,):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigError(name, f"must be a number, got {item!r}")
            if not math.isfinite(item):  # inf passes every lower bound: a learning rate of inf scores nan
                raise ConfigError(name, f"must be a finite number, got {item!r}")
            if not self.contains(item):
                each = "each item " if several else ""
                raise ConfigError(name, f"{each}must be {self}, got {item!r}")


def ranged(default, *, ge=None, gt=None, le=None, lt=None, off=None):
    """A dataclass field with ``default`` whose values must lie in the given range."""
    return dataclasses.field(default=default, metadata={RANGE: Range(ge, gt, le, lt, off)})


def declared_range(field: dataclasses.Field) -> Range | None:
    return field.metadata.get(RANGE)


def check_ranges(config) -> None:
    """Raise ConfigError for the first field of ``config`` whose value is outside its declared range."""
    for field in dataclasses.fields(config):
        rule = declared_range(field)
        if rule is not None:
            rule.check(field.name, getattr(config, field.name))
