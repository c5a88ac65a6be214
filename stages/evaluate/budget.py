"""The evaluation budget: how many seconds `golf eval` may spend, and what happens past it.

Budgeted seconds are every second of the eval stage from its start on a monotonic clock (reading,
decompressing and dequantizing the artifact, loading val, the TTT warm-up, scoring, adaptation,
the global SGD phases, and the moments between them), less the ledger buckets that count toward
no budget (the ``--compare-no-ttt`` diagnostic). That is the conservative reading: the records
timed only their scoring and adaptation loop, leaving out warm-up and decompression
(docs/TTT_CASEOPS.md section E), so a run within this budget is within theirs too.

Past the budget, 'stop-adapting' keeps scoring every remaining target with the weights as they are
(the score stays a legal single pass) and records where adaptation stopped; 'fail' stops the
stage with one line at the first check past it. Not shipped: the stage owns the clock and hands
the shipped TTT code only ``may_adapt``, which it asks before each adaptation step.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

from ..contract.ledger import TimeLedger
from ..errors import GolfError
from ..scoring.receipts import TokenReceipts

OverBudget = Literal["stop-adapting", "fail"]
# The seconds no ledger bucket timed still count; this bucket names them so the ledger adds up.
UNTIMED_BUCKET = "between_phases"
UNTIMED_NOTE = "seconds between the timed parts (hash checks, moving the model to the device): counted"


class EvalBudget:
    """The budget's clock and verdicts for one eval run, started when it is made. The clock is
    ``time.perf_counter`` (monotonic, and the one the ledger times its buckets with, so the two add
    up); tests pass a fake one."""

    def __init__(self, limit_s: float, over_budget: OverBudget, ledger: TimeLedger | None = None,
                 receipts: TokenReceipts | None = None, clock: Callable[[], float] = time.perf_counter,
                 on_stop: Callable[[float, int], None] | None = None):
        self.limit_s = limit_s
        self.over_budget = over_budget
        self.ledger = ledger
        self.receipts = receipts
        self.clock = clock
        self.on_stop = on_stop  # told (spent seconds, check) when adaptation stops, to say so in the log
        self.start = clock()
        self.checks = 0  # times may_adapt was asked
        self.stopped_at_s: float | None = None
        self.stopped_at_check: int | None = None
        self.stopped_after_order: int | None = None

    def spent_s(self) -> float:
        """Budgeted seconds so far: the clock since the start, less the buckets no budget counts."""
        return self.clock() - self.start - self._not_budgeted_s()

    def may_adapt(self, stopped_elsewhere: bool = False) -> bool:
        """Asked before each adaptation step: True within the budget. The first time past it,
        'stop-adapting' records where and says False from then on; 'fail' raises.
        ``stopped_elsewhere``: another rank's budget stopped an update all ranks take together
        (the shipped ``may_adapt_together``), so this rank records the stop at its last check too."""
        if stopped_elsewhere:
            if self.stopped_at_s is None:
                self._record_stop(self.spent_s())
            return False
        self.checks += 1
        if self.stopped_at_s is not None:
            return False
        spent = self.spent_s()
        if spent <= self.limit_s:
            return True
        self._refuse(spent, f"check {self.checks} before an adaptation step")
        self._record_stop(spent)
        return False

    def _record_stop(self, spent: float) -> None:
        self.stopped_at_s, self.stopped_at_check = spent, self.checks
        if self.receipts is not None:
            self.stopped_after_order = self.receipts.steps - 1  # the last scoring step committed
        if self.on_stop is not None:
            self.on_stop(spent, self.checks)

    def finish(self) -> dict:
        """At the end of the scored pass: time what no bucket timed, judge the total, and return the
        metrics (raises under 'fail' if the total is past the budget)."""
        spent = self.spent_s()
        if self.ledger is not None:
            untimed = spent - self.ledger.counted("eval")
            self.ledger.add(UNTIMED_BUCKET, max(0.0, untimed), "eval", UNTIMED_NOTE)
        if spent > self.limit_s:
            self._refuse(spent, "the end of scoring")
        metrics = {
            "budget_s": self.limit_s,
            "over_budget": self.over_budget,
            "budgeted_s": spent,
            "within_budget": spent <= self.limit_s,
            "adaptation_stopped_at_s": self.stopped_at_s,
            "adaptation_stopped_at_check": self.stopped_at_check,
        }
        if self.receipts is not None:
            metrics["adaptation_stopped_after_order"] = self.stopped_after_order
        return metrics

    def _refuse(self, spent: float, where: str) -> None:
        if self.over_budget == "fail":
            raise GolfError(f"over the eval budget: {spent:.6g} s budgeted (load, warm-up, scoring, adaptation) > "
                            f"--eval-budget-s {self.limit_s:g} at {where} (--over-budget fail); nothing was written")

    def _not_budgeted_s(self) -> float:
        if self.ledger is None:
            return 0.0
        return sum(b.seconds for b in self.ledger.buckets.values() if b.counts_toward != "eval")
