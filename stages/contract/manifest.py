"""The manifest every stage writes: what went in, what came out, how long it took, what it measured."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field

from ..errors import GolfError
from .hashing import sha256_bytes
from .ledger import Bucket

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
STAGES = ("tokenize", "train", "quantize", "pack", "eval")
STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass
class FileRecord:
    """One file a stage wrote (or adopted), with the hash later stages check before reading it."""

    path: str
    """Path relative to the stage folder (adopted files outside it too: ``../..``), so a moved or copied
    run folder still verifies."""
    sha256: str
    """sha256 of the file's bytes."""
    bytes: int
    """Exact size in bytes."""


@dataclass
class InputRecord:
    """One upstream stage folder a stage read, pinned by the hash of its manifest."""

    path: str
    """The upstream stage folder, relative to the run root (the folder holding the reading stage's
    folder, e.g. 'tokenize' for artifacts/<run>/tokenize), so a moved or copied run still resolves."""
    stage: str
    """Which stage wrote it ('checkpoint' or 'artifact' for a folder or file without a manifest)."""
    manifest_sha256: str
    """sha256 of the upstream manifest.json: pins every output hash listed in it."""
    files: dict[str, FileRecord] = field(default_factory=dict)
    """The upstream outputs this stage actually read, by output name."""


@dataclass
class Manifest:
    """Everything needed to audit or repeat one stage run."""

    stage: str
    """Which stage wrote this folder."""
    config: dict
    """The resolved config: every field, defaults included."""
    lineage: dict
    """Facts later stages must agree on (tokenizer hash, vocab size, model config)."""
    inputs: dict[str, InputRecord] = field(default_factory=dict)
    """Upstream stage folders by role ('data', 'checkpoint', ...)."""
    outputs: dict[str, FileRecord] = field(default_factory=dict)
    """Files written (or adopted) by this stage, by name."""
    ledger: dict = field(default_factory=dict)
    """Time ledger buckets (see contract.ledger)."""
    metrics: dict = field(default_factory=dict)
    """Measured numbers: losses, bpb, byte counts, sizes."""
    environment: dict = field(default_factory=dict)
    """Interpreter, packages, hardware, git commit and code hash."""
    started_at: str = ""
    """UTC start time, ISO 8601."""
    finished_at: str = ""
    """UTC end time, ISO 8601."""
    run_id: str = ""
    """Unique id of the run that wrote this folder (keys its checkpoints and its lock)."""
    status: str = STATUS_OK
    """'ok', or 'failed' when the stage wrote its evidence but a check failed (see ``failure``)."""
    failure: str = ""
    """Why the stage failed (empty when ok); a failed folder is never used as an input."""
    schema: int = SCHEMA_VERSION
    """Manifest schema version."""
    content_sha256: str = ""
    """sha256 of this manifest's own content (every other field, canonical JSON): a hand edit shows."""

    def to_json(self) -> str:
        data = asdict(self)
        data["content_sha256"] = content_hash(data)
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    def content_matches(self) -> bool:
        """Whether the content hash recorded at write time still equals the content."""
        return bool(self.content_sha256) and content_hash(asdict(self)) == self.content_sha256

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GolfError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            raise GolfError(f"{where}: not a golf manifest of schema {SCHEMA_VERSION}")
        _check_types(data, where)
        try:
            inputs = {
                role: InputRecord(
                    path=rec["path"],
                    stage=rec["stage"],
                    manifest_sha256=rec["manifest_sha256"],
                    files={name: FileRecord(**f) for name, f in rec.get("files", {}).items()},
                )
                for role, rec in data.get("inputs", {}).items()
            }
            outputs = {name: FileRecord(**rec) for name, rec in data.get("outputs", {}).items()}
            return cls(**{**data, "inputs": inputs, "outputs": outputs})
        except (TypeError, KeyError) as exc:
            raise GolfError(f"{where}: malformed manifest ({exc})") from None


JSON_KINDS = {dict: "an object", str: "a string", int: "a number", float: "a number"}


def _check_types(data: dict, where: str) -> None:
    """Refuse a field whose JSON type is not the one its dataclass declares (``outputs`` a list, an
    output's ``path`` a number, a ledger bucket a string): one line instead of a traceback wherever
    the manifest is read. The ledger's buckets are checked here too, since they are read as records."""
    _check_fields(Manifest, data, where, "")
    for role, record in data.get("inputs", {}).items():
        _check_fields(InputRecord, record, where, f"inputs.{role}.")
        for name, file in record.get("files", {}).items():
            _check_fields(FileRecord, file, where, f"inputs.{role}.files.{name}.")
    for name, record in data.get("outputs", {}).items():
        _check_fields(FileRecord, record, where, f"outputs.{name}.")
    for name, bucket in data.get("ledger", {}).items():
        _check_fields(Bucket, bucket, where, f"ledger.{name}.")


def _check_fields(cls: type, data, where: str, prefix: str) -> None:
    """Refuse ``data`` unless it is an object whose fields have the JSON types ``cls`` declares."""
    if not isinstance(data, dict):
        raise GolfError(f"{where}: malformed manifest ({prefix.rstrip('.')} must be an object, got {_kind(data)})")
    for name, hint in typing.get_type_hints(cls).items():
        kinds = _json_kinds(hint)
        value = data.get(name)
        if name in data and not (isinstance(value, kinds) and not isinstance(value, bool)):
            wanted = " or ".join(dict.fromkeys(JSON_KINDS.get(kind, "null") for kind in kinds))
            raise GolfError(f"{where}: malformed manifest ({prefix}{name} must be {wanted}, got {_kind(value)})")


def _json_kinds(hint) -> tuple[type, ...]:
    """The Python types a field's JSON value may have: ``str | None`` both, ``dict[str, X]`` dict,
    ``float`` an int too (JSON writes 3.0 as 3)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(kind for arg in typing.get_args(hint) for kind in _json_kinds(arg))
    kind = typing.get_origin(hint) or hint
    return (float, int) if kind is float else (kind,)


def _kind(value) -> str:
    """A JSON value's type in words."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


def content_hash(data: dict) -> str:
    """sha256 of a manifest's fields except the hash itself, as canonical JSON (sorted keys, no spaces)."""
    body = {key: value for key, value in data.items() if key != "content_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))
