"""Re-verify a stage folder and its whole lineage: every hash, every upstream manifest, every link.

Used by `golf inspect`. Walks from a stage folder up through its inputs to tokenize. For each
stage it checks that the manifest's content still matches the hash written into it (a hand edit
of a metric shows), that the stage did not record its own failure, and that each output file
still matches its record. For each link (downstream -> upstream) it checks that the upstream
manifest is byte for byte the one the downstream stage read, and that the files it read are
still the ones listed. Every problem names the stage or the link it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GolfError
from .hashing import sha256_file
from .ledger import TimeLedger
from .manifest import InputRecord
from .stage_dir import StageDir, verify_file

# Inputs without a manifest: a bare artifact file, a training checkpoint folder.
FILE_INPUTS = ("artifact", "checkpoint")


@dataclass
class StageCheck:
    stage: str
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ledger: TimeLedger | None = None
    environment: dict = field(default_factory=dict)


def _check_self(stage: StageDir, check: StageCheck) -> None:
    problem = stage.integrity_problem()
    if problem:
        check.problems.append(f"{stage.stage}: {problem}")
    for name, record in stage.manifest.outputs.items():
        try:
            verify_file(stage.resolve(record), record)
        except GolfError as exc:
            check.problems.append(f"{stage.stage}: output {name}: {exc}")


def _check_file_input(link: str, stage: StageDir, record: InputRecord, check: StageCheck) -> None:
    """A manifest-less input: each file it was pinned by must be unchanged (a deleted checkpoint is a note)."""
    for name, file in record.files.items():
        path = stage.run_root / file.path
        if not path.is_file():
            target = check.notes if record.stage == "checkpoint" else check.problems
            target.append(f"link {link}: {name} ({file.path}) is gone")
        elif sha256_file(path) != file.sha256:
            check.problems.append(f"link {link}: {file.path} changed since this stage read it")


def _check_link(stage: StageDir, role: str, record: InputRecord, check: StageCheck) -> StageDir | None:
    """Open the upstream of one input and check the link; return it to be audited in turn."""
    link = f"{stage.stage} -> {role} ({record.stage})"
    if record.stage in FILE_INPUTS:
        _check_file_input(link, stage, record, check)
        return None
    try:
        upstream = StageDir(stage.run_root / record.path, record.stage, strict=False)
    except GolfError as exc:
        check.problems.append(f"link {link}: {exc}")
        return None
    if upstream.manifest_sha256 != record.manifest_sha256:
        check.problems.append(f"link {link}: {record.path}/manifest.json is not the manifest this stage read "
                              f"(sha256 {upstream.manifest_sha256[:12]} now, {record.manifest_sha256[:12]} then)")
    for name, file in record.files.items():
        upstream_record = upstream.manifest.outputs.get(name)
        if upstream_record is None or upstream_record.sha256 != file.sha256:
            check.problems.append(f"link {link}: {name} differs from what this stage read")
    return upstream


def audit_lineage(path: str | Path) -> list[StageCheck]:
    """Checks of the stage at ``path`` and of every stage upstream of it, nearest first."""
    checks: list[StageCheck] = []
    seen: set[Path] = set()
    todo = [StageDir(path, strict=False)]
    while todo:
        stage = todo.pop(0)
        if stage.path in seen:
            continue
        seen.add(stage.path)
        check = StageCheck(stage.stage, str(stage.path), ledger=TimeLedger.from_dict(stage.manifest.ledger),
                           environment=stage.manifest.environment)
        _check_self(stage, check)
        for role, record in stage.manifest.inputs.items():
            upstream = _check_link(stage, role, record, check)
            if upstream is not None:
                todo.append(upstream)
        checks.append(check)
    if not any(check.stage == "tokenize" for check in checks):
        checks[0].problems.append("the chain does not reach a tokenize folder: the lineage is incomplete")
    return checks
