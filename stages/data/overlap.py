"""Content-level proof that train and val are disjoint: no val document reappears in train.

Index ranges prove disjointness only if the documents themselves are distinct; a data-prep
default once put 80% of the val documents into train (#2127). Here every document (its token
sequence, BOS to BOS) is hashed, and val hashes are looked up among train hashes.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import numpy as np


def iter_documents(arrays: Iterable[np.ndarray], bos_id: int) -> Iterator[np.ndarray]:
    """Split a stream given in pieces (shards) into documents that each start with BOS."""
    carry = np.zeros(0, dtype=np.uint16)
    for array in arrays:
        array = np.asarray(array)
        starts = np.flatnonzero(array == bos_id)
        if starts.size == 0:
            carry = np.concatenate([carry, array])
            continue
        first = np.concatenate([carry, array[: starts[0]]])
        if first.size:
            yield first
        for begin, end in zip(starts, list(starts[1:]) + [array.size]):
            if end == array.size:
                carry = array[begin:end]
            else:
                yield array[begin:end]
    if carry.size:
        yield carry


def document_digest(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype="<u2").tobytes(), digest_size=16).digest()


def shared_documents(val_docs: Iterable[np.ndarray], train_docs: Iterable[np.ndarray]) -> dict:
    """Count val documents whose exact token sequence also occurs in train (empty documents skipped)."""
    val_digests = {document_digest(doc) for doc in val_docs if doc.size > 1}
    shared = set()
    train_count = 0
    for doc in train_docs:
        train_count += 1
        if doc.size > 1:
            digest = document_digest(doc)
            if digest in val_digests:
                shared.add(digest)
    return {"val_unique_docs": len(val_digests), "train_docs_checked": train_count, "val_docs_in_train": len(shared)}
