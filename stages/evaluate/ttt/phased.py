"""Phased TTT (records #1610 ... top, docs/TTT_CASEOPS.md section D): document LoRA scoring
(``lora.py``) with global SGD phases of the base weights (``global_sgd.py``) between its batches.

The batches of documents are scored longest first, batch i on rank i % world_size, as in the
lora mode. Right after the batch at which phase k is scheduled (on the batch plan: the first
batch whose completion brings the documents of completed batches to boundary_k), every rank
stops, the ranks' scored documents are gathered, and all ranks train the base weights on the
first boundary_k of them together (gradients summed over the ranks), so that their bases stay
identical. The adapters are then rebuilt (fresh A even with warm start: the old ones were learned
on the old base, section D.2 step 3) and scoring resumes with the new base. A batch is never split
across a phase, so each document is scored under one base version, and documents scored after the
last phase (the suffix) are never trained on by global SGD.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist

from ...scoring.bpb import BpbSums
from ...scoring.receipts import TokenReceipts
from . import lora
from .adapters import batch_adapters
from .common import TTTPass, requires_grad, warm_up_backward
from .config import TTTConfig
from .documents import DocumentBatch, find_documents, plan_batches, takes_batch
from .global_sgd import (ScoredDocument, phase_boundaries, run_global_phase, schedule_phases)
from .lora import score_batch, windows_progress
from .lora import warm_up as warm_up_lora
from .mode import register

# Seeds the random tokens of the global SGD warm-up (never val tokens).
WARM_UP_SEED = 0x6C0B


def score_with_phased(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> BpbSums:
    """Score this rank's batches (the caller all-reduces the sums), with the global phases at their
    places in the batch plan; times 'score', 'adapt' and 'global_sgd' apart. Notes the phases as
    the fact 'ttt_global_phases' (per phase: documents, the batch it followed, whether it trained)."""
    scorer = run.scorer
    documents = find_documents(scorer.stream, scorer.num_targets, model.config.bos_id)
    batches = plan_batches(documents, config.lora.batch_docs)
    schedule = schedule_phases([len(batch.docs) for batch in batches],
                               phase_boundaries(config.phased.docs, config.phased.phases))
    trained = [False] * config.phased.phases
    adapters = batch_adapters(model, config, scorer)
    progress = windows_progress(run)
    scored: list[ScoredDocument] = []  # by this rank
    sums = BpbSums()
    model.eval()
    with requires_grad(model, False):
        for processed, batch in enumerate(batches):
            if takes_batch(processed, run.setup.rank, run.setup.world_size):
                adapters.start_batch(batch.docs)
                score_batch(model, run, config, batch.docs, adapters, sums)
                scored += scored_documents(batch)
                progress(sum(doc.targets for doc in batch.docs))
            for phase in schedule.phases_after(processed):
                with run.timed("global_sgd"):  # waiting here for the other ranks counts too
                    everyone = gather_scored(scored, run.receipts)
                done = run_global_phase(model, run, config, everyone, schedule.boundaries[phase])
                trained[phase] = bool(done)  # None: the budget stopped it; []: no SGD step ran
                adapters.rebuild()
    run.note("ttt_global_phases", [{"docs": docs, "after_batch": after, "trained": ran}
                                   for docs, after, ran in zip(schedule.boundaries, schedule.after_batch, trained)])
    return sums


def scored_documents(batch: DocumentBatch) -> list[ScoredDocument]:
    """The batch's documents, each now wholly scored, with its span (BOS through the next BOS)."""
    return [ScoredDocument(batch.index, position, doc.start, doc.targets + 1)
            for position, doc in enumerate(batch.docs)]


def gather_scored(scored: list[ScoredDocument], receipts: TokenReceipts | None = None) -> list[ScoredDocument]:
    """Every rank's scored documents (this rank's alone without a process group); also where the
    ranks meet before a phase. The receipts then catch up to the scoring steps of the busiest rank,
    so that the phase's updates follow, in ``order``, every target any rank committed before it
    (a rank that has scored nothing yet would otherwise note them after order -1)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(scored)
    steps = receipts.steps if receipts is not None else 0
    per_rank: list = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, (scored, steps))
    if receipts is not None:
        receipts.catch_up(max(rank_steps for _, rank_steps in per_rank))
    return [doc for docs, _ in per_rank for doc in docs]


def warm_up(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> None:
    """The lora warm-up, then one forward and backward of a global SGD step (this rank's share of
    its sequences, on random tokens) without a step: kernels and allocations are ready before the
    timed loop (section E). The base weights are left bitwise unchanged and without gradients."""
    warm_up_lora(model, run, config)
    scorer = run.scorer
    rows = run.step_rows(config.phased.global_batch_seqs, config.phased.global_chunk_tokens)
    generator = torch.Generator().manual_seed(WARM_UP_SEED)
    tokens = torch.randint(model.config.vocab_size, (rows, scorer.seq_len + 1), generator=generator).to(scorer.device)
    warm_up_backward(model, scorer.training_loss(model, doc_mask=config.phased.global_doc_mask), tokens,
                     scorer.autocast_dtype)


# The lora mode's declaration (document windows, its no-adaptation comparison, batch fit, memory),
# with the phased scorer and warm-up and the global SGD phases' ledger bucket.
MODE = register(replace(
    lora.MODE,
    name="phased",
    help="'phased' (#1610 lineage, #1790, top #1855) is 'lora' with ttt.phased.phases pauses: pause k (1..phases) "
         "trains every base weight with SGD on the first ttt.phased.docs * k / phases documents already scored "
         "(ttt.phased.global_lr, ttt.phased.global_chunk_tokens), then the later documents are scored with the "
         "new base.",
    score=score_with_phased,
    warm_up=warm_up,
    notes={**lora.MODE.notes,
           "global_sgd": "phased: SGD of the base weights on documents already scored (every phase in this bucket)"},
))
