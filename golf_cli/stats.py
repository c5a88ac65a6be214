"""golf stats: per-seed val_bpb and val_loss of several runs, their mean and spread, and the
challenge's record test (>= 0.005 nats/token better at p < 0.01, one-sided) against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from stages.contract.stage_dir import atomic_write_text
from stages.errors import GolfError
from stages.progress import format_line
from stages.results.seeds import DEFAULT_EVAL
from stages.results.significance import ALPHA, MARGIN_NATS, Summary
from stages.results.stats import Baseline, SeedStats, seed_stats

from .common import handle_errors, print_table

# The baseline, one of three ways (golf submit takes the same options for its significance block).
BaselineOption = typer.Option(None, "--baseline", metavar="RUN", help="A baseline seed's run or eval folder "
                              "(repeat per seed): Welch's t-test on the per-seed val_loss.")
BaselineBpbOption = typer.Option(None, "--baseline-bpb", metavar="X", help="A baseline seed's val_bpb (repeat per "
                                 "seed; one value is a known constant: one-sample t-test), turned into nats with the "
                                 "runs' measured bytes per token.")
BaselineNatsOption = typer.Option(None, "--baseline-nats", metavar="X", help="A baseline seed's val_loss in nats per "
                                  "token (repeat per seed; one value: one-sample t-test).")


@handle_errors
def stats(
    runs: list[Path] = typer.Argument(..., help="Run folders (artifacts/<run>, their --eval folder is read) or eval "
                                      "folders, one per seed."),
    baseline: list[Path] = BaselineOption,
    baseline_bpb: list[float] = BaselineBpbOption,
    baseline_nats: list[float] = BaselineNatsOption,
    eval_name: str = typer.Option(DEFAULT_EVAL, "--eval", metavar="NAME", help="Which eval folder of a run folder "
                                  "to read (e.g. eval-sliding64)."),
    json_out: Path = typer.Option(None, "--json", metavar="FILE", help="Also save the result as JSON (paths as "
                                  "given, relative)."),
):
    """Exit 0 whatever the verdict; the verdict: line says whether the record rule is met.

    The rule (REFERENCE section 1): beat the baseline by at least 0.005 nats per token, shown at
    p < 0.01. H0: mean(baseline) - mean(runs) <= 0.005, tested one-sided on val_loss.
    """
    result = seed_stats(runs, Baseline.choose(baseline or (), baseline_bpb or (), baseline_nats or ()), eval_name)
    print_table(_table(result))
    for line in _lines(result):
        print(line)
    if json_out is not None:
        _save(json_out, result)
        print(format_line({"json": str(json_out)}))


def _table(result: SeedStats) -> Table:
    table = Table("side", "run", "eval folder read", "seed", "val_bpb", "val_loss (nats/token)", "bytes/token",
                  title="per-seed scores")
    rows = [("candidate", s) for s in result.candidates] + [("baseline", s) for s in result.baseline_runs]
    for side, score in rows:
        table.add_row(side, score.run, score.eval_dir, str(score.seed) if score.seed is not None else "n/a",
                      f"{score.val_bpb:.6f}", f"{score.val_loss:.6f}", f"{score.bytes_per_token:.4f}")
    if result.baseline_kind in ("bpb", "nats"):
        bpb = result.baseline_bpb
        for value, nats in zip(bpb.values, result.baseline_nats):
            table.add_row("baseline", f"--baseline-{result.baseline_kind}", "-", "-", f"{value:.6f}", f"{nats:.6f}", "-")
    return table


def _lines(result: SeedStats) -> list[str]:
    lines = [format_line({"seeds": len(result.candidates), "baseline": result.baseline_kind,
                          "bytes_per_token": round(result.bytes_per_token, 6)})]
    lines += [_summary_line("candidate_bpb", result.candidate_bpb), _summary_line("candidate_nats", result.candidate_nats)]
    if result.test is not None:
        test = result.test
        lines += [_summary_line("baseline_bpb", result.baseline_bpb), _summary_line("baseline_nats", test.baseline)]
        lines.append(format_line({"improvement_nats": round(test.improvement, 6), "margin_nats": MARGIN_NATS,
                                  "margin_bpb": round(result.margin_bpb(), 6), "test": f"{test.test} one-sided",
                                  "t": round(test.t, 4), "df": round(test.df, 2), "p_value": f"{test.p_value:.4g}",
                                  "alpha": ALPHA, "significant": test.significant}))
    lines += [f"note:{note}" for note in result.notes]
    lines.append(f"verdict:{result.verdict()}")
    return lines


def _summary_line(name: str, summary: Summary) -> str:
    std = round(summary.std, 6) if summary.std is not None else "n/a"
    return format_line({name: round(summary.mean, 6), "std": std, "n": len(summary.values)})


def _save(path: Path, result: SeedStats) -> None:
    if not path.parent.is_dir():
        raise GolfError(f"{path}: --json folder {path.parent} does not exist")
    try:
        atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise GolfError(f"{path}: cannot write ({exc.strerror})") from None
