"""Reading an artifact file for use, and the one check of whether its code is golf's own.

An artifact carries the code that scores it. Eval runs that code only when the WHOLE bundle
equals the bundle this golf would ship (``installed_sources``: the same ``collect_sources`` over
the installed tree); a changed, missing or extra file makes the code foreign. Foreign code runs
only with ``--trust-artifact-code`` (as ``trust_remote_code`` does on model hubs), and then with
a ``warning:`` line and a record in the eval manifest. Integrity is checked either way
(``schema.read_code``: the header's bundle hash is the hash of the shipped files, the entry is
the runtime), and nothing in the header chooses which files are compared. Eval, ``pack --check``
and inspect all ask this module. Runs in golf, never shipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contract.stage_dir import StageDir
from ..errors import GolfError
from ..progress import Reporter
from .bundle import bundle_id, collect_sources, load_bundle
from .container import ContainerError, read_container
from .schema import RUNTIME_ENTRY, TTT_ENTRY, check_header, read_code

CODE_ROOT = Path(__file__).resolve().parents[2]
# What golf ships: the runtime and every module it imports, plus the container reader and the
# bundle importer, which eval runs on the artifact before the shipped code takes over; and,
# unless packed without it, the test-time training and every module it imports.
SHIPPED_ENTRIES = (RUNTIME_ENTRY, "stages/artifact/container.py", "stages/artifact/bundle.py")
TRUST_FLAG = "--trust-artifact-code"


def installed_sources(with_ttt: bool = True) -> dict[str, str]:
    """{path: source} of the bundle this golf ships: what `golf pack` puts in every artifact (with
    ``with_ttt`` off, what `golf pack --no-ttt` does)."""
    return collect_sources(CODE_ROOT, [*SHIPPED_ENTRIES, *([TTT_ENTRY] if with_ttt else [])])


def ships_ttt(code: dict[str, str]) -> bool:
    """Whether a bundle holds the test-time training code."""
    return TTT_ENTRY in code


@dataclass(frozen=True)
class Artifact:
    """An artifact file, parsed and checked for well-formedness and integrity (not yet for trust)."""

    path: Path
    """Where it was read from."""
    data: bytes
    """The whole file."""
    header: dict
    """The checked header."""
    sections: dict[str, bytes]
    """Section name -> its payload (sha256-checked, still compressed)."""
    code: dict[str, str]
    """The shipped sources {path: source}, whose hash is the header's bundle_sha256."""


def read_artifact(path: str | Path) -> Artifact:
    """Read and check an artifact file; anything malformed is a one-line GolfError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise GolfError(f"{path}: no such artifact file")
    data = path.read_bytes()
    try:
        header, sections = read_container(data)
        check_header(header)
        code = read_code(header, sections)
    except ContainerError as exc:
        raise GolfError(f"{path}: {exc}") from None
    return Artifact(path, data, header, sections, code)


@dataclass(frozen=True)
class CodeCheck:
    """How an artifact's shipped code compares with the bundle this golf would ship."""

    shipped_sha256: str
    """Hash of the shipped bundle (the header's bundle_sha256, which integrity made equal)."""
    installed_sha256: str
    """Hash of the bundle this golf would ship."""
    changed: tuple[str, ...]
    """Files in both whose sources differ."""
    missing: tuple[str, ...]
    """Files golf ships that the artifact does not."""
    extra: tuple[str, ...]
    """Files the artifact ships that golf does not."""

    @property
    def matches(self) -> bool:
        return not (self.changed or self.missing or self.extra)

    def differences(self) -> dict[str, str]:
        """{'changed' | 'missing' | 'extra': comma-separated paths}, the non-empty kinds only."""
        kinds = {"changed": self.changed, "missing": self.missing, "extra": self.extra}
        return {kind: ",".join(paths) for kind, paths in kinds.items() if paths}

    def describe(self) -> str:
        return "; ".join(f"{kind}: {paths}" for kind, paths in self.differences().items())

    def record(self, trusted: bool) -> dict:
        """The manifest fields of this check; ``trusted``: whether foreign code was allowed to run."""
        fields = {"code_sha256": self.shipped_sha256, "code_installed_sha256": self.installed_sha256,
                  "code_matches_installed": self.matches, "code_trusted_foreign": trusted and not self.matches}
        return fields if self.matches else {**fields, "code_differences": self.describe()}


def check_code(shipped: dict[str, str]) -> CodeCheck:
    """Compare every shipped file with the bundle this golf would ship (with or without the TTT
    code, as the artifact was packed: both are golf's own)."""
    installed = installed_sources(with_ttt=ships_ttt(shipped))
    both = shipped.keys() & installed.keys()
    return CodeCheck(
        shipped_sha256=bundle_id(shipped),
        installed_sha256=bundle_id(installed),
        changed=tuple(sorted(rel for rel in both if shipped[rel] != installed[rel])),
        missing=tuple(sorted(installed.keys() - shipped.keys())),
        extra=tuple(sorted(shipped.keys() - installed.keys())),
    )


def vouch_for_code(artifact: Artifact, trust: bool, reporter: Reporter) -> CodeCheck:
    """The code check of ``artifact``; foreign code is refused unless ``trust``, then logged as a warning."""
    check = check_code(artifact.code)
    if check.matches:
        return check
    if not trust:
        raise GolfError(f"{artifact.path}: its code is not the code this golf ships ({check.describe()}); "
                        f"use the golf version that packed it, or pass {TRUST_FLAG} to trust it anyway")
    reporter.log(warning=f"trusting foreign artifact code ({TRUST_FLAG}): golf does not vouch for its results",
                 **check.differences(), shipped_sha256=check.shipped_sha256, installed_sha256=check.installed_sha256)
    return check


def load_runtime(artifact: Artifact):
    """Import the runtime from the artifact's own code (ask ``vouch_for_code`` first)."""
    return load_bundle(artifact.code, RUNTIME_ENTRY)


def load_ttt(artifact: Artifact):
    """Import the test-time training from the artifact's own code (ask ``vouch_for_code`` first);
    an artifact packed without it is one line."""
    if not ships_ttt(artifact.code):
        raise GolfError(f"{artifact.path}: packed without test-time training code (golf pack --no-ttt); "
                        "score it without --ttt, or pack it again with the TTT code")
    return load_bundle(artifact.code, TTT_ENTRY)


def stage_code_report(stage: StageDir) -> tuple[dict, str | None]:
    """What inspect says about the code behind a stage folder: (fields to print, problem or None).

    A pack folder: whether its artifact's code is golf's own. An eval folder: whether the code of
    the artifact it scored is golf's own, read from that artifact itself (the manifest's
    ``code_trusted_foreign`` is the eval's word, and a word can be edited), and whether the code
    the manifest says it ran is that artifact's.
    """
    if stage.stage == "pack" and "artifact" in stage.manifest.outputs:
        return _artifact_report(stage.resolve(stage.manifest.outputs["artifact"]))
    if stage.stage == "eval":
        return _eval_code_report(stage)
    return {}, None


def scored_artifact(stage: StageDir) -> Path | None:
    """The artifact file an eval folder recorded as its input (through its pack folder or as a bare
    file), or None when it records none."""
    record = stage.manifest.inputs.get("artifact")
    file = record.files.get("artifact") if record is not None else None
    if file is None:
        return None
    # A pack's file path is relative to the pack folder; a bare file's, to the run root.
    folder = stage.run_root / record.path if record.stage == "pack" else stage.run_root
    return folder / file.path


def _eval_code_report(stage: StageDir) -> tuple[dict, str | None]:
    path = scored_artifact(stage)
    if path is None:
        return {}, "records no artifact input: the code that scored cannot be checked"
    fields, problem = _artifact_report(path, "scored_artifact_code")
    if problem:
        return fields, (f"its score came from an artifact whose code golf does not vouch for, whatever its "
                        f"manifest says: {problem}")
    recorded = stage.manifest.metrics.get("code_sha256")
    if recorded is not None and recorded != fields["shipped_sha256"]:
        return fields, (f"its manifest says code {str(recorded)[:12]} scored, but its artifact ships code "
                        f"{fields['shipped_sha256'][:12]}")
    return fields, None


def _artifact_report(path: Path, label: str = "artifact_code") -> tuple[dict, str | None]:
    try:
        check = check_code(read_artifact(path).code)
    except GolfError as exc:
        return {label: str(path), "golf_own": False}, str(exc)
    fields = {label: str(path), "golf_own": check.matches, "shipped_sha256": check.shipped_sha256,
              "installed_sha256": check.installed_sha256}
    return fields, None if check.matches else f"its artifact's code is not the code this golf ships ({check.describe()})"
