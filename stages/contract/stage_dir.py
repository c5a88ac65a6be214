"""Stage folders: reading an upstream one with hash checks, writing a new one atomically.

A stage writes into a hidden temporary sibling folder and renames it into place only after the
manifest is written, so a killed stage never leaves a folder that looks complete. An existing
folder is replaced only with ``force``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..errors import GolfError
from .environment import capture
from .hashing import sha256_bytes, sha256_file
from .ledger import TimeLedger
from .manifest import MANIFEST_NAME, FileRecord, InputRecord, Manifest


LOG_FILE = "log.txt"


def default_stage_dir(run: str, stage: str, root: str | Path = "artifacts") -> Path:
    """Where a stage of a named run lives unless a path is given: artifacts/<run>/<stage>."""
    return Path(root) / run / stage


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StageDir:
    """A finished stage folder, opened for reading: every file is hash-checked before use."""

    def __init__(self, path: str | Path, expect_stage: str | None = None):
        self.path = Path(path).resolve()
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise GolfError(f"{path}: no {MANIFEST_NAME} (not a finished golf stage folder)")
        raw = manifest_path.read_bytes()
        self.manifest_sha256 = sha256_bytes(raw)
        self.manifest = Manifest.from_json(raw.decode("utf-8", errors="replace"), str(manifest_path))
        if expect_stage and self.manifest.stage != expect_stage:
            raise GolfError(f"{path}: is a '{self.manifest.stage}' folder, expected '{expect_stage}'")
        self._verified: dict[str, FileRecord] = {}

    @property
    def stage(self) -> str:
        return self.manifest.stage

    @property
    def lineage(self) -> dict:
        return self.manifest.lineage

    def file(self, name: str) -> Path:
        """Path of an output after checking its size and sha256 against the manifest."""
        record = self.manifest.outputs.get(name)
        if record is None:
            raise GolfError(f"{self.path}: manifest lists no output named {name!r}")
        path = self.resolve(record)
        if name not in self._verified:
            verify_file(path, record)
            self._verified[name] = record
        return path

    def files(self, keep) -> list[Path]:
        """All outputs whose name passes ``keep(name)``, in name order, each verified."""
        return [self.file(name) for name in sorted(self.manifest.outputs) if keep(name)]

    def resolve(self, record: FileRecord) -> Path:
        path = Path(record.path)
        return path if path.is_absolute() else self.path / path

    def as_input(self) -> InputRecord:
        """The record a downstream manifest keeps of this folder and of what it read from it."""
        return InputRecord(
            path=str(self.path),
            stage=self.stage,
            manifest_sha256=self.manifest_sha256,
            files=dict(self._verified),
        )


def verify_file(path: Path, record: FileRecord) -> None:
    """Refuse a file whose size or sha256 differs from what its manifest recorded."""
    if not path.is_file():
        raise GolfError(f"{path}: missing (listed in its stage manifest)")
    size = path.stat().st_size
    if size != record.bytes:
        raise GolfError(f"{path}: {size} bytes, manifest says {record.bytes} (file changed or truncated)")
    actual = sha256_file(path)
    if actual != record.sha256:
        raise GolfError(f"{path}: sha256 {actual[:16]}... does not match manifest {record.sha256[:16]}...")


class StageWriter:
    """Builds a stage folder in a temporary sibling and renames it into place on ``commit``.

    Use as a context manager: leaving the block with an exception removes the temporary folder
    and leaves any existing output untouched.
    """

    def __init__(self, out_dir: str | Path, stage: str, force: bool = False):
        self.out_dir = Path(out_dir).resolve()
        self.stage = stage
        self.force = force
        if self.out_dir.exists() and not force:
            raise GolfError(f"{out_dir}: already exists (pass --force to replace it)")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp_dir.mkdir()
        self.ledger = TimeLedger()
        self.inputs: dict[str, InputRecord] = {}
        self.outputs: dict[str, FileRecord] = {}
        self.started_at = utc_now()
        self._start = time.perf_counter()

    def __enter__(self) -> "StageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def path(self, name: str) -> Path:
        """Where to write an output file (inside the temporary folder)."""
        return self.tmp_dir / name

    def add_output(self, name: str, path: Path | None = None) -> FileRecord:
        """Hash a written file and list it in the manifest. ``path`` defaults to ``self.path(name)``.

        A path outside the stage folder (an adopted file) is recorded as absolute.
        """
        path = Path(path) if path is not None else self.path(name)
        resolved = path.resolve()
        try:
            rel = str(resolved.relative_to(self.tmp_dir.resolve()))
        except ValueError:
            rel = str(resolved)
        record = FileRecord(path=rel, sha256=sha256_file(resolved), bytes=resolved.stat().st_size)
        self.outputs[name] = record
        return record

    def add_input(self, role: str, upstream: StageDir) -> None:
        self.inputs[role] = upstream.as_input()

    def commit(self, config: dict, lineage: dict, metrics: dict, log_text: str | None = None) -> Manifest:
        """Write the manifest, then move the folder into place (replacing the old one if forced).

        ``log_text`` (the stage's key:value lines) is saved as ``log.txt`` beside the manifest.
        """
        if log_text is not None:
            atomic_write_text(self.path(LOG_FILE), log_text)
            self.add_output("log", self.path(LOG_FILE))
        manifest = Manifest(
            stage=self.stage,
            config=config,
            lineage=lineage,
            inputs=self.inputs,
            outputs=self.outputs,
            ledger=self.ledger.to_dict(),
            metrics={**metrics, "stage_wall_seconds": round(time.perf_counter() - self._start, 3)},
            environment=capture(),
            started_at=self.started_at,
            finished_at=utc_now(),
        )
        atomic_write_text(self.tmp_dir / MANIFEST_NAME, manifest.to_json())
        _fsync_dir(self.tmp_dir)
        old = None
        if self.out_dir.exists():
            if not self.force:
                raise GolfError(f"{self.out_dir}: appeared while the stage ran (pass --force to replace it)")
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.out_dir, old)
        os.rename(self.tmp_dir, self.out_dir)
        _fsync_dir(self.out_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename over the target."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
