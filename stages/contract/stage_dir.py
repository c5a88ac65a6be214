"""Stage folders: reading an upstream one with hash checks, writing a new one atomically.

A stage writes into a hidden temporary sibling folder and renames it into place only after the
manifest is written, so a killed stage never leaves a folder that looks complete. One process
writes a folder at a time (a lock, see ``lock.py``); what a killed writer left behind (marked as
golf's own, see ``temp_folders.py``) is removed at the next start of that stage, with a ``cleaned:``
line. The output path must pass ``output_path.check_output_path``: no symlink on the way, not in or
over an input, and an existing folder replaced only with ``force`` and only if it is a golf folder of
the same stage: never a folder golf did not write.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ..errors import GolfError
from ..progress import Reporter
from .environment import capture
from .hashing import sha256_bytes, sha256_file
from .ledger import TimeLedger
from .lock import FolderLock
from .manifest import MANIFEST_NAME, STATUS_FAILED, STATUS_OK, FileRecord, InputRecord, Manifest
from .output_path import Inputs, check_output_path
from .temp_folders import new_temporary, remove_leftovers, set_aside, unmark


LOG_FILE = "log.txt"


def default_stage_dir(run: str, stage: str, root: str | Path = "artifacts") -> Path:
    """Where a stage of a named run lives unless a path is given: artifacts/<run>/<stage>."""
    return Path(root) / run / stage


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A unique id for one stage run: UTC time (sortable) plus randomness."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def relative_path(target: str | Path, base: str | Path) -> str:
    """``target`` relative to ``base`` (with '..' where needed), so recorded paths survive a move."""
    return os.path.relpath(Path(target).resolve(), Path(base).resolve())


class StageDir:
    """A finished stage folder, opened for reading: every file is hash-checked before use.

    Opening refuses a manifest whose content no longer matches its own hash (edited by hand) and
    a stage that recorded its own failure; ``strict=False`` opens either for auditing.
    """

    def __init__(self, path: str | Path, expect_stage: str | None = None, strict: bool = True):
        self.path = Path(path).resolve()
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise GolfError(f"{path}: no {MANIFEST_NAME} (not a finished golf stage folder)")
        raw = manifest_path.read_bytes()
        self.manifest_sha256 = sha256_bytes(raw)
        self.manifest = Manifest.from_json(raw.decode("utf-8", errors="replace"), str(manifest_path))
        if expect_stage and self.manifest.stage != expect_stage:
            raise GolfError(f"{path}: is a '{self.manifest.stage}' folder, expected '{expect_stage}'")
        if strict:
            problem = self.integrity_problem()
            if problem:
                raise GolfError(f"{path}: {problem}")
        self._verified: dict[str, FileRecord] = {}

    @property
    def stage(self) -> str:
        return self.manifest.stage

    @property
    def lineage(self) -> dict:
        return self.manifest.lineage

    @property
    def run_root(self) -> Path:
        """The folder holding this stage folder: input paths in the manifest are relative to it."""
        return self.path.parent

    def integrity_problem(self) -> str | None:
        """Why this folder must not be used as an input (None when it may)."""
        if not self.manifest.content_matches():
            return f"{MANIFEST_NAME} was edited after the stage wrote it (its content hash does not match)"
        if self.manifest.status != STATUS_OK:
            return f"the {self.stage} stage failed: {self.manifest.failure or 'no reason recorded'}"
        return None

    def input_path(self, role: str) -> Path:
        """Where the upstream folder (or file) of an input role is, resolved from the run root."""
        record = self.manifest.inputs.get(role)
        if record is None:
            raise GolfError(f"{self.path}: records no {role!r} input")
        return self.run_root / record.path

    def upstream(self, role: str, expect_stage: str) -> "StageDir":
        """Open the upstream stage folder of an input role."""
        return StageDir(self.input_path(role), expect_stage)

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
        return self.path / record.path

    def as_input(self, run_root: Path) -> InputRecord:
        """The record a downstream manifest (of a stage under ``run_root``) keeps of this folder."""
        return InputRecord(
            path=relative_path(self.path, run_root),
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


def file_record(path: Path, base: Path) -> FileRecord:
    """Hash a file and record it with its path relative to ``base``."""
    return FileRecord(path=relative_path(path, base), sha256=sha256_file(path), bytes=path.stat().st_size)


class StageWriter:
    """Builds a stage folder in a temporary sibling and renames it into place on ``commit``.

    Use as a context manager: leaving the block with an exception removes the temporary folder
    (and a run folder this writer created, if it stayed empty) and leaves any existing output
    untouched. The folder's lock is held from construction to the end of the block.
    """

    def __init__(self, out_dir: str | Path, stage: str, force: bool = False, reporter=None,
                 inputs: Inputs | None = None):
        """``inputs`` maps a label to each path the stage reads (see ``check_output_path``);
        ``reporter`` gets the ``cleaned:`` lines (default: printed)."""
        self.out_dir = check_output_path(out_dir, stage, force, inputs)
        self.stage = stage
        self.force = force
        self.inputs_read = dict(inputs or {})
        self.run_id = new_run_id()
        self._created_parents = _missing_parents(self.out_dir.parent)
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GolfError(f"{out_dir}: cannot create the folder {exc.filename} ({exc.strerror})") from None
        try:
            self.lock = FolderLock(self.out_dir, self.run_id)
        except OSError as exc:
            self._remove_created_parents()
            raise GolfError(f"{out_dir}: cannot write in the folder it goes in ({exc.strerror})") from None
        try:
            check_output_path(out_dir, stage, force, inputs)  # again, now that no other golf writes it
            for leftover in remove_leftovers(self.out_dir, stage):
                (reporter or Reporter()).log(cleaned=leftover, reason="left by a killed run of this stage")
            self.tmp_dir = new_temporary(self.out_dir, stage, self.run_id)
        except BaseException as exc:
            self.lock.release()
            self._remove_created_parents()
            if isinstance(exc, OSError):
                raise GolfError(f"{out_dir}: cannot write there ({exc.strerror})") from None
            raise
        self.ledger = TimeLedger()
        self.inputs: dict[str, InputRecord] = {}
        self.outputs: dict[str, FileRecord] = {}
        self.started_at = utc_now()
        self._start = time.perf_counter()

    def __enter__(self) -> "StageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.tmp_dir.exists():
                shutil.rmtree(self.tmp_dir, ignore_errors=True)
        finally:
            self.lock.release()
        if exc_type is not None:
            self._remove_created_parents()

    def _remove_created_parents(self) -> None:
        """Remove the folders this writer created for its output, if nothing else went into them."""
        for folder in self._created_parents:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break

    @property
    def run_root(self) -> Path:
        return self.out_dir.parent

    def path(self, name: str) -> Path:
        """Where to write an output file (inside the temporary folder)."""
        return self.tmp_dir / name

    def add_output(self, name: str, path: Path | None = None) -> FileRecord:
        """Hash a written file and list it in the manifest. ``path`` defaults to ``self.path(name)``.

        A path outside the stage folder (an adopted file) is recorded relative to it ('../..').
        """
        path = Path(path) if path is not None else self.path(name)
        record = file_record(path.resolve(), self.tmp_dir.resolve())
        self.outputs[name] = record
        return record

    def add_input(self, role: str, upstream: StageDir) -> None:
        self.inputs[role] = upstream.as_input(self.run_root)

    def add_file_input(self, role: str, kind: str, folder: Path, files: dict[str, Path]) -> None:
        """An input without a manifest (a bare artifact file, a training checkpoint), pinned by hashes."""
        self.inputs[role] = InputRecord(
            path=relative_path(folder, self.run_root), stage=kind, manifest_sha256="",
            files={name: file_record(path, self.run_root) for name, path in files.items()},
        )

    def commit(self, config: dict, lineage: dict, metrics: dict, log_text: str | None = None,
               failure: str = "") -> Manifest:
        """Write the manifest, then move the folder into place (replacing the old one if forced).

        ``log_text`` (the stage's key:value lines) is saved as ``log.txt`` beside the manifest.
        A ``failure`` keeps the evidence but marks the folder failed: no later stage will read it.
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
            run_id=self.run_id,
            status=STATUS_FAILED if failure else STATUS_OK,
            failure=failure,
        )
        atomic_write_text(self.tmp_dir / MANIFEST_NAME, manifest.to_json())
        _fsync_dir(self.tmp_dir)
        old = None
        if os.path.lexists(self.out_dir):
            # It appeared while the stage ran: the same rule as at the start.
            check_output_path(self.out_dir, self.stage, self.force, self.inputs_read)
            old = set_aside(self.out_dir, self.stage, self.run_id)
        unmark(self.tmp_dir)
        os.rename(self.tmp_dir, self.out_dir)
        _fsync_dir(self.out_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest


def _missing_parents(folder: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` would create for ``folder``, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


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
