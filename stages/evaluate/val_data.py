"""The val split as every scoring stage reads it: tokens, byte sidecar, tokenizer and byte table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract.stage_dir import StageDir
from ..data.shards import read_shards, shard_index
from ..data.tokenizer import load_processor
from ..errors import GolfError
from .bpb import ByteTable, build_byte_table


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

    def check_window_fits(self, seq_len: int, source: str) -> None:
        """Refuse a window longer than the split (nothing to score), naming where its length came from."""
        if (len(self.tokens) - 1) // seq_len == 0:
            raise GolfError(f"seq_len {seq_len:,} (from {source}) is longer than the val split "
                            f"({max(len(self.tokens) - 1, 0):,} targets): nothing to score")


def split_files(data: StageDir, split: str):
    return data.files(lambda name: shard_index(name, split) is not None)


def train_shard_paths(data: StageDir):
    paths = split_files(data, "train")
    if not paths:
        raise GolfError(f"{data.path}: no train shards listed in its manifest")
    return paths


def load_val(data: StageDir, vocab_size: int | None = None, use_sidecar: bool = True,
             build_table=build_byte_table) -> ValData:
    """Read and verify the val shards, the optional sidecar and the tokenizer of a tokenize folder.

    ``build_table`` lets `golf eval` build the byte table with the code shipped in the artifact.
    """
    val_paths = split_files(data, "val")
    if not val_paths:
        raise GolfError(f"{data.path}: no val shards listed in its manifest")
    tokens = read_shards(val_paths).astype(np.int64)
    sidecar = None
    side_paths = split_files(data, "val_bytes") if use_sidecar else []
    if side_paths:
        sidecar = read_shards(side_paths).astype(np.int64)
        if sidecar.size != tokens.size:
            raise GolfError(f"{data.path}: byte sidecar has {sidecar.size} entries for {tokens.size} val tokens")
    sp = load_processor(data.file("tokenizer").read_bytes(), str(data.file("tokenizer")))
    table = build_table(sp, vocab_size)
    if tokens.size and int(tokens.max()) >= table.vocab_size:
        raise GolfError(f"{data.path}: val token id {int(tokens.max())} is outside the vocab ({table.vocab_size})")
    return ValData(tokens, sidecar, table, data.lineage.get("tokenizer_sha256", ""))
