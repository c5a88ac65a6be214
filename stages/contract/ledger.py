"""The time ledger: named buckets of seconds, each saying which 600 s budget it counts toward.

The challenge has two budgets on 8xH100: training (everything that reads training data, GPTQ
calibration included) and evaluation. By convention compile warm-up on dummy data and periodic
validation count toward neither; they still get a bucket so that no second goes unexplained.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterable, Literal

Budget = Literal["train", "eval"]
BUDGET_LIMIT_SECONDS: dict[str, float] = {"train": 600.0, "eval": 600.0}


@dataclass
class Bucket:
    seconds: float
    """Wall-clock seconds spent in this bucket."""
    counts_toward: str | None
    """'train', 'eval', or None when no budget counts these seconds."""
    note: str = ""
    """Why the bucket counts (or does not) toward its budget."""


class TimeLedger:
    """Ordered buckets of wall-clock seconds for one stage."""

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}

    def add(self, name: str, seconds: float, counts_toward: Budget | None = None, note: str = "") -> None:
        """Add seconds to a bucket (created on first use; its budget must not change later)."""
        bucket = self.buckets.get(name)
        if bucket is None:
            self.buckets[name] = Bucket(seconds, counts_toward, note)
            return
        if bucket.counts_toward != counts_toward:
            raise ValueError(f"bucket {name!r} counts toward {bucket.counts_toward}, not {counts_toward}")
        bucket.seconds += seconds

    def merge(self, other: "TimeLedger") -> None:
        """Add every bucket of ``other`` into this ledger (a resumed run adds the run it continues)."""
        for name, bucket in other.buckets.items():
            self.add(name, bucket.seconds, bucket.counts_toward, bucket.note)

    @contextmanager
    def measure(self, name: str, counts_toward: Budget | None = None, note: str = ""):
        """Time the body of a ``with`` block into a bucket."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start, counts_toward, note)

    def counted(self, budget: Budget) -> float:
        """Seconds that count toward one budget."""
        return sum(b.seconds for b in self.buckets.values() if b.counts_toward == budget)

    def to_dict(self) -> dict:
        return {name: asdict(bucket) for name, bucket in self.buckets.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "TimeLedger":
        ledger = cls()
        for name, fields in data.items():
            ledger.buckets[name] = Bucket(**fields)
        return ledger


NOT_MEASURED = "not measured"


def budget_report(ledgers: Iterable[TimeLedger], limits: dict[str, float] | None = None,
                  measured: Iterable[str] | None = None) -> dict[str, dict]:
    """Sum the counted seconds of several stages per budget and say PASS or FAIL against its limit.

    ``limits`` replaces a budget's default limit (an eval run with ``--eval-budget-s`` is judged
    against its own budget). A budget not in ``measured`` (default: every budget) reads
    'not measured': the stage that owns it is not in the lineage, so its seconds were never timed,
    and a second never timed is no PASS. The verdict is about the hardware the seconds were
    measured on: 600 s on a laptop CPU says nothing about 8xH100 and the report says so by naming
    the hardware beside it (callers do).
    """
    ledgers = list(ledgers)
    limits = {**BUDGET_LIMIT_SECONDS, **(limits or {})}
    measured = set(limits if measured is None else measured)
    report = {}
    for budget, limit in limits.items():
        seconds = sum(ledger.counted(budget) for ledger in ledgers)
        passed = "PASS" if seconds <= limit else "FAIL"
        report[budget] = {"seconds": round(seconds, 3), "limit": limit,
                          "verdict": passed if budget in measured else NOT_MEASURED}
    return report
