"""golf inspect: print a stage's manifest, re-verify its hashes and lineage, show every ledger, and say
whether each artifact's code in the lineage is golf's own."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from stages.artifact.verify import stage_code_report
from stages.contract.audit import audit_lineage
from stages.contract.environment import hardware_name
from stages.contract.ledger import budget_report
from stages.contract.manifest import STAGES
from stages.contract.stage_dir import StageDir
from stages.progress import format_line

from .common import handle_errors, print_table


@handle_errors
def inspect(path: Path = typer.Argument(..., help="A stage folder (any of tokenize, train, quantize, pack, eval).")):
    """Exit 0 only if every hash in the folder and its whole lineage still matches and no code in it is foreign."""
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
    for budget, verdict in budget_report(check.ledger for check in checks).items():
        # A budget is measured on the hardware of the stage that owns it (train / eval).
        owner = next((c for c in checks if c.stage == budget), None)
        measured_on = hardware_name(owner.environment) if owner else "n/a (stage not in this lineage)"
        print(format_line({"budget": budget, **verdict, "measured_on": measured_on}))
    for note in (note for check in checks for note in check.notes):
        print(f"note:{note}")
    problems = [problem for check in checks for problem in check.problems]
    problems += _code_problems(checks)
    for problem in problems:
        print(f"problem:{problem}")
    print(format_line({"lineage_stages": len(checks), "verified": not problems}))
    if problems:
        raise typer.Exit(1)


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
