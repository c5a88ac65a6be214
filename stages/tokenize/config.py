"""What `golf tokenize` reads, and how it trains the tokenizer and writes the shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..data.shards import DEFAULT_SHARD_TOKENS
from ..ranges import check_ranges, ranged
from .spm import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE


@dataclass(frozen=True)
class TokenizeConfig:
    """What to tokenize and how."""

    source: Literal["news", "jsonl", "text"] = "news"
    """Document source: the embedded news corpus, a JSONL file with a 'text' field, or .txt files."""
    input: str | None = None
    """Path of the JSONL file or text file/folder (the news corpus is found in site-packages)."""
    max_docs: int | None = ranged(None, ge=1)
    """Use only the first N documents of the source (None: all)."""
    val_docs: int | None = ranged(None, ge=1)
    """Val = the first N documents. None: 50,000, or 10% of a corpus under 500,000 documents."""
    vocab_size: int = ranged(1024, ge=MIN_VOCAB_SIZE, le=MAX_VOCAB_SIZE)
    """Vocabulary size of the trained tokenizer."""
    spec: Literal["exact", "challenge"] = "exact"
    """Trainer settings: 'challenge' (nmt_nfkc) or 'exact' (identity normalization, round-trips)."""
    tokenizer: str | None = None
    """Reuse this SentencePiece model instead of training one."""
    tokenizer_train_docs: int | None = ranged(None, ge=1)
    """Train the tokenizer on the first N train documents (None: all of them)."""
    shard_tokens: int = ranged(DEFAULT_SHARD_TOKENS, ge=1)
    """Tokens per shard file (the challenge uses 10^8)."""
    max_shared_docs: int = ranged(0, ge=0)
    """Val documents allowed to reappear verbatim in train (duplicates in the source); more refuses."""
    caseops: bool = False
    """Apply the CaseOps case transform (stages/data/caseops.py) before training and encoding, reserve its
    four controls as pieces 4-7, and count each val token's original bytes in the sidecar (the top records' data)."""

    def __post_init__(self) -> None:
        check_ranges(self)
