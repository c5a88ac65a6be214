"""The manifest every stage writes: what went in, what came out, how long it took, what it measured."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import GolfError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
STAGES = ("tokenize", "train", "quantize", "pack", "eval")


@dataclass
class FileRecord:
    """One file a stage wrote (or adopted), with the hash later stages check before reading it."""

    path: str
    """Path relative to the stage folder, or absolute for adopted files outside it."""
    sha256: str
    """sha256 of the file's bytes."""
    bytes: int
    """Exact size in bytes."""


@dataclass
class InputRecord:
    """One upstream stage folder a stage read, pinned by the hash of its manifest."""

    path: str
    """The upstream stage folder, as an absolute path."""
    stage: str
    """Which stage wrote it."""
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
    schema: int = SCHEMA_VERSION
    """Manifest schema version."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GolfError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            raise GolfError(f"{where}: not a golf manifest of schema {SCHEMA_VERSION}")
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
