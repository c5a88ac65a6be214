"""golf inspect: print a stage's manifest, re-verify its hashes and lineage, re-derive what the files
can prove (the artifact is its quantize stage's tensors, an eval's counts, data and receipts), show
every ledger against its budget, and say whether each artifact's code in the lineage is golf's own;
with --rescore, rerun the eval and compare."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from stages.artifact.verify import stage_code_report
from stages.contract.audit import audit_lineage
from stages.contract.environment import hardware_name
from stages.contract.ledger import BUDGET_LIMIT_SECONDS, budget_report
from stages.contract.manifest import STAGES
from stages.contract.stage_dir import StageDir
from stages.evaluate.rederive import RESCORE_TOLERANCE, rederive_lineage, rescore
from stages.progress import format_line

from .common import handle_errors, print_table


@handle_errors
def inspect(path: Path = typer.Argument(..., help="A stage folder (any of tokenize, train, quantize, pack, eval)."),
            rescore_eval: bool = typer.Option(False, "--rescore", help="An eval folder: rerun the eval from its "
                                              "artifact and its lineage's val data with the recorded settings (in a "
                                              "temporary folder) and compare val_loss and val_bpb to "
                                              f"{RESCORE_TOLERANCE:g}: the one check a forger cannot pass.")):
    """Exit 0 only if every hash in the folder and its whole lineage still matches, everything re-derivable
    agrees, no code in it is foreign and no score is partial, non-finite or of foreign data."""
    stage = StageDir(path, strict=False)
    manifest = stage.manifest
    print(format_line({"stage": manifest.stage, "path": str(stage.path), "started": manifest.started_at,
                       "finished": manifest.finished_at}))
    print(format_line({"config": json.dumps(manifest.config, separators=(",", ":"))}))
    for key, value in manifest.metrics.items():
        if not isinstance(value, (dict, list)):
            print(format_line({key: value}))
    checks = sorted(audit_lineage(path), key=lambda c: STAGES.index(c.stage) if c.stage in STAGES else len(STAGES))
    table = Table("stage", "bucket", "seconds", "counts toward", title="time ledger of the lineage")
    for check in checks:
        for name, bucket in check.ledger.buckets.items():
            table.add_row(check.stage, name, f"{bucket.seconds:.2f}", bucket.counts_toward or "-")
            print(format_line({"ledger": f"{check.stage}.{name}", "seconds": round(bucket.seconds, 3),
                               "counts_toward": bucket.counts_toward or "none"}))
    print_table(table)
    _print_budgets(checks)
    for fields in rederive_lineage(checks):
        print(format_line(fields))
    for note in (note for check in checks for note in check.notes):
        print(f"note:{note}")
    problems = [problem for check in checks for problem in check.problems]
    problems += _code_problems(checks)
    if rescore_eval:
        problems += _rescore_problems(stage)
    for problem in problems:
        print(f"problem:{problem}")
    print(format_line({"lineage_stages": len(checks), "verified": not problems}))
    if problems:
        raise typer.Exit(1)


def _print_budgets(checks) -> None:
    """Each budget against its limit (the eval's own --eval-budget-s), measured on the hardware of the
    stage that owns it (train / eval); a budget whose stage is not in the lineage reads 'not measured'."""
    owners = {budget: next((c for c in checks if c.stage == budget), None) for budget in BUDGET_LIMIT_SECONDS}
    evaluation = owners["eval"]
    limit = StageDir(evaluation.path, strict=False).manifest.config.get("budget_s") if evaluation else None
    limits = {"eval": float(limit)} if isinstance(limit, (int, float)) else {}
    report = budget_report((check.ledger for check in checks), limits, [b for b, c in owners.items() if c])
    for budget, verdict in report.items():
        owner = owners[budget]
        measured_on = hardware_name(owner.environment) if owner else f"n/a (no {budget} stage in this lineage)"
        print(format_line({"budget": budget, **verdict, "measured_on": measured_on}))


def _rescore_problems(stage: StageDir) -> list[str]:
    """Rerun the eval and compare; a difference is a problem."""
    if stage.stage != "eval":
        return [f"{stage.stage}: --rescore takes an eval folder"]
    result = rescore(stage.path)
    print(format_line({"rescore": "match" if result["matches"] else "MISMATCH", **result,
                       "tolerance": RESCORE_TOLERANCE}))
    if result["matches"]:
        return []
    return [f"eval: rescoring gives val_bpb {result['rescored_val_bpb']!r} and val_loss "
            f"{result['rescored_val_loss']!r}, its manifest says {result['recorded_val_bpb']!r} and "
            f"{result['recorded_val_loss']!r}"]


def _code_problems(checks) -> list[str]:
    """Print whether each artifact's code is golf's own; a foreign one, or a score it made, is a problem."""
    problems = []
    for check in checks:
        fields, problem = stage_code_report(StageDir(check.path, strict=False))
        if fields:
            print(format_line(fields))
        if problem:
            problems.append(f"{check.stage}: {problem}")
    return problems
