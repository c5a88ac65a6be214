"""How stages report: plain ``key:value`` log lines (grep-able) and progress on long loops.

The library only talks to a ``Reporter``; the CLI hands in one that draws rich progress bars when
it writes to a terminal. Without bars (a pipe, a log file, the library) a long loop prints a plain
``progress:`` line every ``PROGRESS_EVERY_S`` seconds instead, so a piped run never goes silent.
Every logged line is also kept, so a stage can save its log next to its manifest.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator


# Losses and bits per byte are printed with 8 decimals, as the leaderboard quotes them.
PRECISE_KEYS = ("loss", "bpb")
# Seconds between the plain progress lines of a long loop (no line for a loop that ends sooner).
PROGRESS_EVERY_S = 10.0


def format_value(key: str, value) -> str:
    if isinstance(value, float):
        if any(word in key for word in PRECISE_KEYS):
            return f"{value:.8f}"
        return f"{value:.6g}"
    return str(value)


def format_line(fields: dict) -> str:
    return " ".join(f"{key}:{format_value(key, value)}" for key, value in fields.items())


class Reporter:
    """Prints ``key:value`` lines to stdout, and a plain ``progress:`` line every ``every_s``
    seconds of a long loop (by ``clock``; tests pass a fake one). Subclasses draw bars instead."""

    def __init__(self, stream=None, every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self.lines: list[str] = []
        self.every_s, self.clock = every_s, clock

    @property
    def stream(self):
        """The stream given, else whatever ``sys.stdout`` is now: a live progress bar swaps in a
        proxy that prints above the bar, and a stream kept from construction would bypass it."""
        return self._stream if self._stream is not None else sys.stdout

    def log(self, **fields) -> None:
        line = format_line(fields)
        self.lines.append(line)
        print(line, file=self.stream, flush=True)

    def show(self, **fields) -> None:
        """Print a line that is not kept in the stage's saved log (progress: it depends on the clock)."""
        print(format_line(fields), file=self.stream, flush=True)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """Yield ``advance(n)``; once ``every_s`` seconds have passed since the loop began or since
        the last such line, advancing prints ``progress:<description> done:<n> of:<total> seconds:<s>``
        (not kept in ``lines``: the saved log stays free of clock-dependent lines)."""
        start = last = self.clock()
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done, last
            done += n
            now = self.clock()
            if now - last >= self.every_s:
                last = now
                self.show(progress=description, done=done, of=total if total is not None else "?",
                          seconds=round(now - start, 1))
        yield advance

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def silent_reporter() -> Reporter:
    """A reporter that prints nothing (ranks other than 0; a launcher checking arguments)."""
    return Reporter(stream=open(os.devnull, "w"))
