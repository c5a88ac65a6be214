"""The documents of the val stream and the order document-level TTT visits them in
(docs/TTT_CASEOPS.md section C.1).

A document starts at a BOS and its targets run up to and including the next BOS (that BOS is
0 bytes, but its NLL counts), so the documents' targets tile the stream's targets exactly. The
documents are sorted by length, cut into batches of similar length, and the batches are visited
longest first, each rank taking every world_size-th one.

Targets are numbered as in ``scoring``: the target at stream position j is token j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Document:
    """Stream tokens [start, start + targets]: inputs start .. start + targets - 1 predict the
    targets at positions start + 1 .. start + targets (the last one the next document's BOS)."""

    start: int
    """Stream position of its first token: its BOS (position 0 for a stream that starts mid-document)."""
    targets: int
    """Predictions scored for it."""

    def num_chunks(self, chunk: int) -> int:
        return math.ceil(self.targets / chunk)


@dataclass(frozen=True)
class DocumentBatch:
    """Documents adapted side by side, each with its own adapters."""

    index: int
    """Position among all batches in ascending length order (the records' orig_batch_idx)."""
    docs: tuple[Document, ...]
    """Its documents, shortest first."""

    @property
    def longest(self) -> int:
        return max(doc.targets for doc in self.docs)


def find_documents(stream: torch.Tensor, num_targets: int, bos_id: int) -> list[Document]:
    """The documents whose targets tile positions 1 .. num_targets of ``stream``, in stream order."""
    bos = torch.nonzero(stream[:num_targets] == bos_id).flatten().tolist()
    starts = bos if bos and bos[0] == 0 else [0, *bos]
    ends = [*starts[1:], num_targets]
    return [Document(start, end - start) for start, end in zip(starts, ends)]


def plan_batches(documents: list[Document], batch_docs: int) -> list[DocumentBatch]:
    """Documents sorted by length (stable), cut into batches of ``batch_docs``, longest batch first.

    Similar lengths in a batch waste few padded rows; the longest go first so that the batches
    a rank picks up last are short ones (the records' order).
    """
    ordered = sorted(documents, key=lambda doc: doc.targets)
    batches = [DocumentBatch(index, tuple(ordered[first : first + batch_docs]))
               for index, first in enumerate(range(0, len(ordered), batch_docs))]
    return sorted(batches, key=lambda batch: -batch.longest)


def takes_batch(number: int, rank: int, world_size: int) -> bool:
    """Whether rank ``rank`` processes batch ``number`` of the processing order: every world_size-th
    one, from its rank on. Fixed in advance (no shared queue), so every run assigns the same batches."""
    return number % world_size == rank


def rank_batches(batches: list[DocumentBatch], rank: int, world_size: int) -> list[DocumentBatch]:
    """The batches rank ``rank`` processes (``takes_batch``), in order."""
    return [batch for number, batch in enumerate(batches) if takes_batch(number, rank, world_size)]
