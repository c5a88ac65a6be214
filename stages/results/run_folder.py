"""The stage folders of one run, found from a run folder or from any stage folder in it.

A run folder (artifacts/<run>) holds its stages as subfolders (tokenize, train, quantize, pack,
eval, eval-sliding64, ...); from a stage folder the lineage is followed upstream through the
inputs its manifest records, and the other evals of the same artifact beside it are added. Each folder is opened without refusing it, so that a report can
show what is there and say, plot by plot, what does not verify.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..contract.manifest import MANIFEST_NAME, STAGES
from ..contract.stage_dir import StageDir
from ..errors import GolfError


@dataclass
class RunStages:
    """The stage folders of one run, by stage; a stage may have several folders (eval, eval-ttt)."""

    root: Path
    """The run folder (or the folder the given stage folder lives in)."""
    folders: dict[str, list[StageDir]] = field(default_factory=dict)
    """Stage name -> its folders, in name order."""

    def one(self, stage: str) -> StageDir:
        """The folder of a stage that has exactly one (the first in name order when several)."""
        found = self.folders.get(stage)
        if not found:
            raise Unavailable(f"no {stage} folder in {self.root.name}")
        return found[0]

    def verified(self, stage: str) -> StageDir:
        """The stage's folder, if its manifest verifies (else the reason, as Unavailable)."""
        folder = self.one(stage)
        problem = folder.integrity_problem()
        if problem:
            raise Unavailable(f"{folder.path.name}: {problem}")
        return folder

    def all(self) -> list[StageDir]:
        """Every folder, in pipeline order."""
        order = {stage: index for index, stage in enumerate(STAGES)}
        return [f for stage in sorted(self.folders, key=lambda s: order.get(s, len(order))) for f in self.folders[stage]]


class Unavailable(Exception):
    """Why a plot cannot be drawn from what the run recorded (shown as 'not available: ...')."""


def find_stages(path: str | Path) -> RunStages:
    """The run's stage folders: the subfolders of a run folder, or a stage folder and its lineage."""
    path = Path(path)
    if not path.is_dir():
        raise GolfError(f"{path}: no such run folder")
    if (path / MANIFEST_NAME).is_file():
        run = _from_lineage(StageDir(path, strict=False))
        _add_sibling_evals(run)
        return run
    run = RunStages(path.resolve())
    for manifest in sorted(path.glob(f"*/{MANIFEST_NAME}")):
        _add(run, StageDir(manifest.parent, strict=False))
    if not run.folders:
        raise GolfError(f"{path}: holds no golf stage folders (give artifacts/<run> or a stage folder)")
    return run


def _from_lineage(start: StageDir) -> RunStages:
    run = RunStages(start.run_root)
    todo, seen = [start], set()
    while todo:
        folder = todo.pop()
        if folder.path in seen:
            continue
        seen.add(folder.path)
        _add(run, folder)
        for record in folder.manifest.inputs.values():
            upstream = folder.run_root / record.path
            if record.stage in STAGES and (upstream / MANIFEST_NAME).is_file():
                todo.append(StageDir(upstream, strict=False))
    return run


def _add_sibling_evals(run: RunStages) -> None:
    """Beside a given eval, the other evals of the same artifact in its folder (a TTT eval's plain twin)."""
    artifacts = {_artifact_sha(f) for f in run.folders.get("eval", [])} - {None}
    known = {f.path for f in run.all()}
    for manifest in sorted(run.root.glob(f"*/{MANIFEST_NAME}")):
        if manifest.parent.resolve() in known:
            continue
        try:
            folder = StageDir(manifest.parent, "eval", strict=False)
        except GolfError:  # another stage, or not a manifest at all
            continue
        if _artifact_sha(folder) in artifacts:
            _add(run, folder)


def _artifact_sha(folder: StageDir) -> str | None:
    record = folder.manifest.inputs.get("artifact")
    artifact = record.files.get("artifact") if record else None
    return artifact.sha256 if artifact else None


def _add(run: RunStages, folder: StageDir) -> None:
    run.folders.setdefault(folder.stage, []).append(folder)
    run.folders[folder.stage].sort(key=lambda f: f.path.name)
