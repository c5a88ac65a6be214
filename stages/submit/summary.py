"""Across seeds: the significance block.

The significance test against the current record (one-sided Welch in nats per token) is `golf stats`'
library (stages/results): given a baseline, the block holds its test; without one, it says so instead of a
number.
"""

from __future__ import annotations

from pathlib import Path

from ..results.stats import Baseline, seed_stats

NOT_COMPUTED = "not computed: no baseline given (golf submit --baseline RUN, --baseline-bpb X or --baseline-nats X)"
RULE = "at least 0.005 nats/token better than the record, p < 0.01 (one-sided t-test over seeds)"


def significance(eval_folders: list[Path], baseline: Baseline) -> dict:
    """The significance block of submission.json and the README: golf stats' record test of the seeds'
    evals against the baseline, or a note that none was given."""
    if baseline.kind == "none":
        return {"computed": False, "note": NOT_COMPUTED, "rule": RULE}
    stats = seed_stats(eval_folders, baseline).to_dict()
    return {"computed": True, "note": stats["verdict"], "rule": RULE, "baseline": stats["baseline"],
            "bytes_per_token": stats["bytes_per_token"], "test": stats["test"], "notes": stats["notes"]}
