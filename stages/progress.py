"""How stages report: plain ``key:value`` log lines (grep-able) and progress on long loops.

The library only talks to a ``Reporter``; the CLI hands in one that draws rich progress bars.
Every logged line is also kept, so a stage can save its log next to its manifest.
"""

from __future__ import annotations

import os
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
        self._stream = stream
        self.lines: list[str] = []

    @property
    def stream(self):
        """The stream given, else whatever ``sys.stdout`` is now: a live progress bar swaps in a
        proxy that prints above the bar, and a stream kept from construction would bypass it."""
        return self._stream if self._stream is not None else sys.stdout

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


def silent_reporter() -> Reporter:
    """A reporter that prints nothing (ranks other than 0; a launcher checking arguments)."""
    return Reporter(stream=open(os.devnull, "w"))
