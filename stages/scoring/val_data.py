"""The val split as every scoring stage reads it: tokens, byte sidecar, tokenizer and byte table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..contract.stage_dir import StageDir
from ..data.folder import split_files
from ..data.shards import read_shards
from ..data.tokenizer import load_processor
from ..errors import GolfError
from .bpb import ByteTable, build_byte_table
from .sidecar import SidecarMismatch, audit_against_text, audit_sidecar, control_ids, read_val_text


VAL_TEXT = "val_text"  # the manifest's name for the original val documents (sidecar.VAL_TEXT_FILE)


@dataclass
class ValData:
    tokens: np.ndarray
    """The val token stream (documents as [BOS] + tokens), int64."""
    sidecar: np.ndarray | None
    """Per-token byte counts of the original text, when the data has a sidecar."""
    table: ByteTable
    """The tokenizer's byte table (used when there is no sidecar)."""
    tokenizer_sha256: str
    """Lineage: the tokenizer these tokens were made with."""
    caseops: bool = False
    """The tokens are of CaseOps text (the tokenizer reserves its controls): only a sidecar counts its bytes."""
    byte_source: str = "tokenizer table"
    """Where the scored bytes come from: 'sidecar' or 'tokenizer table'."""
    byte_source_reason: str = ""
    """Why the byte table is used (no sidecar, or the sidecar was not asked for)."""
    sidecar_audit: dict = field(default_factory=dict)
    """The sidecar's audit against the text its tokens rebuild (``sidecar.py``), with its seconds."""

    def check_window_fits(self, seq_len: int, source: str) -> None:
        """Refuse a window longer than the split (nothing to score), naming where its length came from."""
        if (len(self.tokens) - 1) // seq_len == 0:
            raise GolfError(f"seq_len {seq_len:,} (from {source}) is longer than the val split "
                            f"({max(len(self.tokens) - 1, 0):,} targets): nothing to score")


def load_val(data: StageDir, vocab_size: int | None = None, use_sidecar: bool = True,
             build_table=build_byte_table) -> ValData:
    """Read and verify the val shards, the optional sidecar and the tokenizer of a tokenize folder.

    A sidecar is audited exactly (``sidecar.py``) before it is used, and refused when it fails.
    CaseOps data is never scored through the byte table (its markers would count 3 bytes each,
    about 9% more bytes): without its sidecar it is refused. ``build_table`` lets `golf eval`
    build the byte table with the code shipped in the artifact; the audit uses golf's own.
    """
    val_paths = split_files(data, "val")
    if not val_paths:
        raise GolfError(f"{data.path}: no val shards listed in its manifest")
    tokens = read_shards(val_paths).astype(np.int64)
    sp = load_processor(data.file("tokenizer").read_bytes(), str(data.file("tokenizer")))
    table = build_table(sp, vocab_size)
    if tokens.size and int(tokens.max()) >= table.vocab_size:
        raise GolfError(f"{data.path}: val token id {int(tokens.max())} is outside the vocab ({table.vocab_size})")
    val = ValData(tokens, None, table, data.lineage.get("tokenizer_sha256", ""), caseops=control_ids(sp) is not None)
    side_paths = split_files(data, "val_bytes")
    if side_paths and use_sidecar:
        val.sidecar = read_shards(side_paths).astype(np.int64)
        val.sidecar_audit = _audit(data, sp, val)
        val.byte_source = "sidecar"
    else:
        val.byte_source_reason = "the sidecar was not asked for (use_sidecar false)" if side_paths \
            else "the data has no byte sidecar"
    if val.caseops and val.sidecar is None:
        raise GolfError(f"{data.path}: CaseOps data is scored only with its byte sidecar ({val.byte_source_reason}); "
                        "the tokenizer's byte table would count each case marker as 3 bytes (about 9% more bytes)")
    return val


def _audit(data: StageDir, sp, val: ValData) -> dict:
    """The sidecar's exact audit, timed: against the original val text where the data keeps it (a
    normalizing tokenizer's sidecar of original bytes), else against the text the tokens rebuild;
    a sidecar that fails it is refused."""
    started = time.perf_counter()
    try:
        if VAL_TEXT in data.manifest.outputs:
            audit = audit_against_text(sp, val.tokens, val.sidecar, read_val_text(data.file(VAL_TEXT)), val.caseops)
        else:
            audit = audit_sidecar(sp, build_byte_table(sp, val.table.vocab_size), val.tokens, val.sidecar, val.caseops)
    except SidecarMismatch as exc:
        raise GolfError(f"{data.path}: {exc}; this data is refused") from None
    return {**audit, "seconds": round(time.perf_counter() - started, 4)}
