"""Across seeds: mean and standard deviation of the scores, and the significance block.

The significance test against the current record (one-sided Welch in nats per token) belongs to
`golf stats`; until a submission is given its baseline, the block says so instead of a number.
``significance`` is the one place to point at that library function.
"""

from __future__ import annotations

import statistics

NOT_COMPUTED = "not computed: run golf stats"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def significance(rows: list[dict]) -> dict:
    """The significance block of submission.json and the README (no baseline is known here)."""
    return {"computed": False, "note": NOT_COMPUTED, "rule": "at least 0.005 nats/token better than the record, "
            "p < 0.01 (one-sided Welch t-test over seeds)"}
