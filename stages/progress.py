"""How stages report: plain ``key:value`` log lines (grep-able) and progress on long loops.

The library only talks to a ``Reporter``; the CLI hands in one that draws rich progress bars.
Every logged line is also kept, so a stage can save its log next to its manifest.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


# Losses and bits per byte are printed with 8 decimals, as the leaderboard quotes them.
PRECISE_KEYS = ("loss", "bpb")


def format_value(key: str, value) -> str:
    if isinstance(value, float):
        if any(word in key for word in PRECISE_KEYS):
            return f"{value:.8f}"
        return f"{value:.6g}"
    return str(value)


def format_line(fields: dict) -> str:
    return " ".join(f"{key}:{format_value(key, value)}" for key, value in fields.items())


class Reporter:
    """Prints ``key:value`` lines to stdout; progress is silent. Subclasses draw bars."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lines: list[str] = []

    def log(self, **fields) -> None:
        line = format_line(fields)
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """Yield ``advance(n)``; a plain reporter shows nothing until the work is done."""
        yield lambda n=1: None

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
