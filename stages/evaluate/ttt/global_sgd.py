"""The global SGD phases of phased TTT (records #1610 ... top, docs/TTT_CASEOPS.md section D):
between batches of document-LoRA scoring, pause and train every base weight with SGD on
documents already scored, then score the rest with the updated base.

Phase k of K trains on the first boundary_k = floor(P (k + 1) / K) scored documents (P:
``ttt.phased.docs``). The records pause when a shared counter of completed documents reaches a
boundary, which depends on which rank finishes first; here the schedule is a function of the batch
plan alone: phase k runs right after the first batch (in processing order) whose completion
brings the documents of completed batches to boundary_k. Every batch after it is scored with the
updated base, on any number of ranks (a rank waits at a phase until every batch before it is
done), so the schedule, the training sets and the scores do not depend on the world size.

A phase's training set: the scored documents sorted by (ascending-length batch index, position in
batch), the first boundary_k of them (the records' rule, H.4.6), their token spans concatenated.
Training on it: chunks of ``global_chunk_tokens``, the last chunk skipped, whole ``seq_len``
sequences, ``global_batch_seqs`` per step over all ranks, a fresh SGD optimizer per phase with
the learning rate cosine over the chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable, Sequence

import torch

from ...scoring.receipts import TokenReceipts
from .common import TTTPass, chunk_sequence_starts, cosine_lr, requires_grad, train_sequences
from .config import TTTConfig


def phase_boundaries(phase_docs: int, phases: int) -> list[int]:
    """Documents phase k trains on: floor(phase_docs * (k + 1) / phases), k = 0 .. phases - 1."""
    return [phase_docs * (k + 1) // phases for k in range(phases)]


@dataclass(frozen=True)
class PhaseSchedule:
    """When each global SGD phase runs, on the batch plan."""

    boundaries: tuple[int, ...]
    """Documents each phase trains on."""
    after_batch: tuple[int | None, ...]
    """Per phase, the batch (in processing order) right after which it runs; None: skipped, because
    it has no documents, its boundary is never reached, or only after the last batch (then it would
    train a model nothing scores)."""

    def phases_after(self, batch: int) -> list[int]:
        """The phases that run, in order, right after batch ``batch`` is scored."""
        return [phase for phase, after in enumerate(self.after_batch) if after == batch]

    @property
    def skipped(self) -> list[int]:
        return [phase for phase, after in enumerate(self.after_batch) if after is None]


def schedule_phases(batch_sizes: Sequence[int], boundaries: Sequence[int]) -> PhaseSchedule:
    """Place each phase right after the first batch at which the documents of the batches completed
    so far (``batch_sizes`` in processing order) reach its boundary."""
    completed = list(accumulate(batch_sizes))
    last = len(batch_sizes) - 1
    after_batch = []
    for boundary in boundaries:
        reached = next((i for i, done in enumerate(completed) if done >= boundary), None)
        after_batch.append(None if boundary == 0 or reached is None or reached == last else reached)
    return PhaseSchedule(tuple(boundaries), tuple(after_batch))


@dataclass(frozen=True)
class ScoredDocument:
    """A document every target of which is committed, and where it sits in the batch plan."""

    batch: int
    """Index of its batch in ascending-length order (the records' orig_batch_idx)."""
    position: int
    """Its place in that batch."""
    start: int
    """Stream index of its BOS."""
    length: int
    """Tokens from its BOS through the next document's BOS (its targets + 1)."""


def training_documents(scored: Iterable[ScoredDocument], count: int) -> list[ScoredDocument]:
    """The first ``count`` scored documents by (batch, position): the shortest of the scored ones,
    whichever rank scored them."""
    return sorted(scored, key=lambda doc: (doc.batch, doc.position))[:count]


def training_stream(stream: torch.Tensor, documents: Sequence[ScoredDocument]) -> tuple[torch.Tensor, torch.Tensor]:
    """The documents' token spans concatenated (so each join repeats the BOS shared by a document's
    end and the next one's start, as the records do), and the stream index of every token."""
    if not documents:
        return stream[:0], torch.zeros(0, dtype=torch.int64)
    positions = torch.cat([torch.arange(doc.start, doc.start + doc.length) for doc in documents])
    return stream[positions], positions


def run_global_phase(model: torch.nn.Module, run: TTTPass, config: TTTConfig, scored: Iterable[ScoredDocument],
                     boundary: int) -> list[ScoredDocument] | None:
    """One phase, timed into 'global_sgd': train on the first ``boundary`` scored documents. Returns
    the documents trained on; [] when no SGD step ran (their tokens fit the one chunk that is never
    trained); None when the eval budget says stop adapting (then the base stays)."""
    if not run.may_adapt_together():
        return None
    documents = training_documents(scored, boundary)
    with run.timed("global_sgd"):
        tokens, positions = training_stream(run.scorer.stream, documents)
        steps = train_global_phase(model, run, config, tokens, positions)
    return documents if steps else []


def train_global_phase(model: torch.nn.Module, run: TTTPass, config: TTTConfig, tokens: torch.Tensor,
                       positions: torch.Tensor) -> int:
    """SGD on every base weight over the packed ``tokens`` (stream indices ``positions``): for each
    chunk but the last, ``global_epochs`` passes over its whole sequences, each step's sequences
    split into contiguous slices over the ranks; a fresh optimizer, so no momentum carries over
    from an earlier phase. The weights' requires_grad flags are restored afterwards, and the model
    is left in eval mode. Returns the number of SGD steps taken (0 when the tokens fit one chunk)."""
    seq_len, settings = run.scorer.seq_len, config.phased
    steps = 0
    num_chunks = math.ceil((len(tokens) - 1) / settings.global_chunk_tokens)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.global_lr, momentum=settings.global_momentum)
    loss_fn = run.scorer.training_loss(model, doc_mask=settings.global_doc_mask)
    model.train()
    with requires_grad(model, True):
        for chunk in range(num_chunks - 1):  # the records never train the stream's last chunk
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(settings.global_lr, chunk, num_chunks)
            starts = chunk_sequence_starts(chunk, settings.global_chunk_tokens, len(tokens) - 1, seq_len)
            steps += train_sequences(loss_fn, optimizer, run, tokens, starts, settings.global_batch_seqs,
                                     settings.global_epochs, settings.global_grad_clip,
                                     lambda step, mine: note_trained_targets(run.receipts, positions, mine, seq_len),
                                     run.pad_to(settings.global_batch_seqs, settings.global_chunk_tokens))
    optimizer.zero_grad(set_to_none=True)  # no gradient outlives the phase
    model.eval()
    return steps


def note_trained_targets(receipts: TokenReceipts | None, positions: torch.Tensor, starts: torch.Tensor,
                         seq_len: int) -> None:
    """Note the stream targets the sequences at ``starts`` (in the packed stream) trained on, one
    update row per run of consecutive stream positions (a packed row spans several documents).

    At a join the packed pair (a document's last target, the next one's BOS) is no pair of the
    stream: it teaches BOS after BOS and reads no val target, so it is not noted.
    """
    if receipts is None or not len(starts):
        return
    columns = torch.arange(seq_len + 1)
    for row in positions[starts[:, None] + columns]:
        inputs, targets = row[:-1], row[1:]
        genuine = targets == inputs + 1
        breaks = torch.nonzero(genuine[1:] != genuine[:-1]).flatten() + 1
        for span, kept in zip(torch.tensor_split(targets, breaks), torch.tensor_split(genuine, breaks)):
            if kept[0]:
                receipts.note_update(int(span[0]), int(span[-1]))
