"""The deterministic train/val split: val is the first N documents, train is the rest.

For FineWeb-sized input N is 50,000, as in the challenge. A small corpus gets 10% of its
documents instead: min(50,000, ceil(n/10)), which meets 50,000 exactly at 500,000 documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import GolfError

CHALLENGE_VAL_DOCS = 50_000
SMALL_CORPUS_VAL_SHARE = 0.1


@dataclass(frozen=True)
class Split:
    """Half-open document index ranges [start, stop) of each split."""

    val: tuple[int, int]
    train: tuple[int, int]

    def disjoint(self) -> bool:
        return self.val[1] <= self.train[0] or self.train[1] <= self.val[0]

    def to_dict(self) -> dict:
        return {
            "val_docs": list(self.val),
            "train_docs": list(self.train),
            "disjoint": self.disjoint(),
            "rule": "val = documents [0, N), train = documents [N, total)",
        }


def default_val_docs(num_docs: int) -> int:
    return min(CHALLENGE_VAL_DOCS, math.ceil(num_docs * SMALL_CORPUS_VAL_SHARE))


def make_split(num_docs: int, val_docs: int | None = None) -> Split:
    if num_docs < 2:
        raise GolfError(f"the corpus has {num_docs} document(s): val and train need one each at least, "
                        "so a corpus needs 2 or more (one document per line of JSONL, per .txt file)")
    n_val = default_val_docs(num_docs) if val_docs is None else val_docs
    if not 0 < n_val < num_docs:
        raise GolfError(f"val must take between 1 and {num_docs - 1} of {num_docs} documents, got {n_val}")
    split = Split(val=(0, n_val), train=(n_val, num_docs))
    assert split.disjoint()
    return split
