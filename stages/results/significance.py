"""The challenge's record rule as a test: at least 0.005 nats per token better at p < 0.01.

The rule (README of openai/parameter-golf, docs/REFERENCE.md section 1): a new record "must beat
the existing SOTA by at least 0.005 nats" and show "at p < 0.01 that they achieved the required
0.005-nat improvement". So the null hypothesis is an improvement of at most 0.005 nats:

    H0: mean(baseline) - mean(candidate) <= 0.005    H1: ... > 0.005

tested one-sided in nats per token (val_loss). With two or more baseline values it is Welch's
t-test (unequal variances) of the candidate against the baseline shifted down by the margin; a
single baseline value (a published mean) is a known constant, so it is the one-sample t-test of
the candidate against that constant less the margin. scipy computes the t distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev
from typing import Literal, Sequence

from scipy import stats

from ..errors import GolfError

MARGIN_NATS = 0.005
"""The improvement a record must show, in nats per token."""
ALPHA = 0.01
"""The significance level: the p-value must be strictly below it."""

TestKind = Literal["welch", "one-sample"]


def nats_from_bpb(bpb: float, bytes_per_token: float) -> float:
    """Nats per token of a score in bits per byte: bpb * ln 2 * bytes per token."""
    return bpb * math.log(2) * bytes_per_token


def bpb_from_nats(nats: float, bytes_per_token: float) -> float:
    """Bits per byte of a loss in nats per token: nats / (ln 2 * bytes per token)."""
    return nats / (math.log(2) * bytes_per_token)


@dataclass(frozen=True)
class Summary:
    """Mean and spread of one side's per-seed values."""

    values: tuple[float, ...]
    """The per-seed values, in the order given."""
    mean: float
    """Their mean."""
    std: float | None
    """Their sample standard deviation (n - 1 in the denominator); None for a single value."""

    @classmethod
    def of(cls, values: Sequence[float]) -> "Summary":
        values = tuple(float(v) for v in values)
        return cls(values, mean(values), stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class Significance:
    """The outcome of the record test, every number in nats per token."""

    candidate: Summary
    """The candidate's per-seed val_loss."""
    baseline: Summary
    """The baseline's per-seed val_loss (one value: a known constant)."""
    improvement: float
    """mean(baseline) - mean(candidate): positive when the candidate is better."""
    test: TestKind
    """'welch' (two or more baseline values) or 'one-sample' (one)."""
    t: float
    """The t statistic of candidate - (baseline - margin); negative favours the candidate."""
    df: float
    """Degrees of freedom (Welch-Satterthwaite for 'welch', n - 1 for 'one-sample')."""
    p_value: float
    """One-sided p-value of H0: improvement <= margin."""
    margin: float = MARGIN_NATS
    """The improvement the rule asks for."""
    alpha: float = ALPHA
    """The level the p-value must be under."""

    @property
    def significant(self) -> bool:
        """Whether the rule is met: p strictly below alpha."""
        return self.p_value < self.alpha

    def verdict(self) -> str:
        """One sentence: met or not, with the numbers that decide it."""
        outcome = "record rule met" if self.significant else "record rule not met"
        relation = "<" if self.significant else ">="
        return (f"{outcome}: {self.improvement:+.5f} nats/token better than the baseline, needs > {self.margin} "
                f"at p < {self.alpha}; one-sided {self.test} t-test p = {self.p_value:.4g} {relation} {self.alpha}")


def record_test(candidate: Sequence[float], baseline: Sequence[float], margin: float = MARGIN_NATS,
                alpha: float = ALPHA) -> Significance:
    """Test whether ``candidate`` (per-seed nats per token) beats ``baseline`` by more than ``margin``."""
    if len(candidate) < 2:
        raise GolfError(f"the record test needs at least 2 candidate seeds, got {len(candidate)}")
    if not baseline:
        raise GolfError("the record test needs a baseline (runs or numbers)")
    shifted = [value - margin for value in baseline]
    if len(baseline) == 1:
        kind: TestKind = "one-sample"
        result = stats.ttest_1samp(candidate, shifted[0], alternative="less")
    else:
        kind = "welch"
        result = stats.ttest_ind(candidate, shifted, equal_var=False, alternative="less")
    if math.isnan(result.pvalue):
        raise GolfError("the seeds have no spread at all (every value equal): the t-test is undefined")
    cand, base = Summary.of(candidate), Summary.of(baseline)
    return Significance(cand, base, base.mean - cand.mean, kind, float(result.statistic), float(result.df),
                        float(result.pvalue), margin, alpha)
