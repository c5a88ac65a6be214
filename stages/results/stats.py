"""Multi-seed statistics of runs against a baseline: what `golf stats` prints and `golf submit` reuses.

The test is in nats per token (val_loss), as the rule is. A baseline given as bits per byte is
turned into nats with the candidate runs' own measured bytes per token (scored bytes over scored
tokens, pooled over the seeds), which is exact when the baseline was scored on the same val data
with the same tokenizer, and says so in the notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from ..errors import GolfError
from .seeds import DEFAULT_EVAL, SeedScore, read_score, require_same_data
from .significance import Significance, Summary, bpb_from_nats, nats_from_bpb, record_test

BaselineKind = Literal["runs", "bpb", "nats", "none"]


@dataclass(frozen=True)
class Baseline:
    """What the candidate is compared with: eval runs, or numbers in bpb or in nats per token."""

    kind: BaselineKind
    """'runs', 'bpb' or 'nats' numbers, or 'none' (no test)."""
    runs: tuple[str | Path, ...] = ()
    """Run or eval folders (kind 'runs')."""
    values: tuple[float, ...] = ()
    """Per-seed numbers (kind 'bpb' or 'nats'); one number is a known constant."""

    @classmethod
    def choose(cls, runs: Sequence = (), bpb: Sequence[float] = (), nats: Sequence[float] = ()) -> "Baseline":
        """The one baseline the options name; more than one kind is refused."""
        given = [(kind, values) for kind, values in (("runs", runs), ("bpb", bpb), ("nats", nats)) if values]
        if len(given) > 1:
            raise GolfError("give the baseline one way: --baseline RUN, --baseline-bpb X or --baseline-nats X")
        if not given:
            return cls("none")
        kind, values = given[0]
        if kind == "runs":
            return cls("runs", runs=tuple(values))
        return cls(kind, values=tuple(float(v) for v in values))


@dataclass(frozen=True)
class SeedStats:
    """The candidate's seeds, the baseline's, and the record test between them."""

    candidates: tuple[SeedScore, ...]
    """One score per candidate seed."""
    baseline_kind: BaselineKind
    """How the baseline was given."""
    baseline_runs: tuple[SeedScore, ...]
    """The baseline's scores when it was given as runs."""
    baseline_nats: tuple[float, ...]
    """The baseline per seed in nats per token (converted from bpb if given so)."""
    bytes_per_token: float
    """The candidates' pooled scored bytes per scored token: the bpb <-> nats factor."""
    test: Significance | None
    """The record test (None without a baseline)."""
    notes: tuple[str, ...]
    """What a reader should know: conversions, partial scores, derived byte counts."""

    @property
    def candidate_bpb(self) -> Summary:
        return Summary.of([score.val_bpb for score in self.candidates])

    @property
    def candidate_nats(self) -> Summary:
        return Summary.of([score.val_loss for score in self.candidates])

    @property
    def baseline_bpb(self) -> Summary | None:
        if not self.baseline_nats:
            return None
        if self.baseline_runs:
            return Summary.of([score.val_bpb for score in self.baseline_runs])
        return Summary.of([bpb_from_nats(value, self.bytes_per_token) for value in self.baseline_nats])

    def margin_bpb(self) -> float | None:
        """The rule's margin in bits per byte at the candidates' bytes per token."""
        return bpb_from_nats(self.test.margin, self.bytes_per_token) if self.test else None

    def verdict(self) -> str:
        if self.test is None:
            return "no baseline given: no record test (pass --baseline RUN, --baseline-bpb X or --baseline-nats X)"
        return self.test.verdict()

    def to_dict(self) -> dict:
        """Everything as plain JSON (paths relative to the working folder, as read)."""
        summary = lambda s: None if s is None else {"values": list(s.values), "mean": s.mean, "std": s.std}  # noqa: E731
        test = self.test
        return {
            "candidates": [score.to_dict() for score in self.candidates],
            "candidate_bpb": summary(self.candidate_bpb),
            "candidate_nats": summary(self.candidate_nats),
            "baseline": {"kind": self.baseline_kind, "runs": [score.to_dict() for score in self.baseline_runs],
                         "nats": summary(Summary.of(self.baseline_nats)) if self.baseline_nats else None,
                         "bpb": summary(self.baseline_bpb)},
            "bytes_per_token": self.bytes_per_token,
            "test": None if test is None else {
                "kind": test.test, "improvement_nats": test.improvement, "margin_nats": test.margin,
                "margin_bpb": self.margin_bpb(), "t": test.t, "df": test.df, "p_value": test.p_value,
                "alpha": test.alpha, "significant": test.significant},
            "verdict": self.verdict(),
            "notes": list(self.notes),
        }


def seed_stats(runs: Sequence[str | Path], baseline: Baseline, eval_name: str = DEFAULT_EVAL) -> SeedStats:
    """Read every run's verified eval, check they are comparable, and test against the baseline."""
    candidates = [read_score(run, eval_name) for run in runs]
    baseline_runs = [read_score(run, eval_name) for run in baseline.runs]
    _refuse_repeats(candidates + baseline_runs)
    require_same_data(candidates + baseline_runs)
    notes = _notes(candidates + baseline_runs)
    per_token = _pooled_bytes_per_token(candidates)
    if baseline.kind == "runs":
        nats = [score.val_loss for score in baseline_runs]
    elif baseline.kind == "bpb":
        nats = [nats_from_bpb(value, per_token) for value in baseline.values]
        notes.append(f"baseline bpb converted to nats with the candidates' {per_token:.6f} bytes/token: exact only "
                     "if the baseline was scored on the same val data with the same tokenizer")
    elif baseline.kind == "nats":
        nats = list(baseline.values)
        notes.append(f"baseline bpb shown converted from nats with the candidates' {per_token:.6f} bytes/token")
    else:
        nats = []
    test = record_test([score.val_loss for score in candidates], nats) if nats else None
    return SeedStats(tuple(candidates), baseline.kind, tuple(baseline_runs), tuple(nats), per_token, test,
                     tuple(notes))


def _refuse_repeats(scores: list[SeedScore]) -> None:
    """The same eval folder twice would count one seed as two."""
    seen: dict[str, str] = {}
    for score in scores:
        key = str(Path(score.eval_dir).resolve())
        if key in seen:
            raise GolfError(f"{score.run} and {seen[key]} are the same eval folder ({score.eval_dir}): each seed once")
        seen[key] = score.run


def _pooled_bytes_per_token(scores: list[SeedScore]) -> float:
    """Scored bytes over scored tokens over all seeds (each seed's factor weighted by its tokens)."""
    if all(score.tokens for score in scores):
        return sum(s.bytes_per_token * s.tokens for s in scores) / sum(s.tokens for s in scores)
    return math.fsum(score.bytes_per_token for score in scores) / len(scores)


def _notes(scores: list[SeedScore]) -> list[str]:
    notes = [f"{s.eval_dir}: bytes per token {s.bytes_source}" for s in scores if s.bytes_source.startswith("derived")]
    notes += [f"{s.eval_dir}: scored a prefix of the val split only (partial)" for s in scores if s.partial]
    return notes
