"""Re-verify a stage folder and its whole lineage: every hash, every upstream manifest.

Used by `golf inspect`. Walks from a stage folder up through its inputs, checking that each
output file still matches its manifest and that each upstream manifest is the very one the
downstream stage read (by sha256).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GolfError
from .hashing import sha256_file
from .ledger import TimeLedger
from .stage_dir import StageDir, verify_file


@dataclass
class StageCheck:
    stage: str
    path: str
    problems: list[str] = field(default_factory=list)
    ledger: TimeLedger | None = None
    environment: dict = field(default_factory=dict)


def _check_outputs(stage: StageDir, check: StageCheck) -> None:
    for name, record in stage.manifest.outputs.items():
        try:
            verify_file(stage.resolve(record), record)
        except GolfError as exc:
            check.problems.append(f"output {name}: {exc}")


def _check_input(role: str, record, check: StageCheck) -> StageDir | None:
    if record.stage == "artifact":  # a bare artifact file has no manifest: check the file itself
        for file in record.files.values():
            if not Path(file.path).is_file() or sha256_file(file.path) != file.sha256:
                check.problems.append(f"input {role}: {file.path} changed since it was read")
        return None
    try:
        upstream = StageDir(record.path, record.stage)
    except GolfError as exc:
        check.problems.append(f"input {role}: {exc}")
        return None
    if upstream.manifest_sha256 != record.manifest_sha256:
        check.problems.append(f"input {role}: {record.path} manifest changed since this stage read it")
    for name, file in record.files.items():
        upstream_record = upstream.manifest.outputs.get(name)
        if upstream_record is None or upstream_record.sha256 != file.sha256:
            check.problems.append(f"input {role}: {name} differs from what this stage read")
    return upstream


def audit_lineage(path: str | Path) -> list[StageCheck]:
    """Checks of the stage at ``path`` and of every stage upstream of it, nearest first."""
    checks: list[StageCheck] = []
    seen: set[Path] = set()
    todo = [StageDir(path)]
    while todo:
        stage = todo.pop(0)
        if stage.path in seen:
            continue
        seen.add(stage.path)
        check = StageCheck(stage.stage, str(stage.path), ledger=TimeLedger.from_dict(stage.manifest.ledger),
                           environment=stage.manifest.environment)
        _check_outputs(stage, check)
        for role, record in stage.manifest.inputs.items():
            upstream = _check_input(role, record, check)
            if upstream is not None:
                todo.append(upstream)
        checks.append(check)
    return checks
