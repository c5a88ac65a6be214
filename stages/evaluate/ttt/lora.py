"""Document LoRA TTT (records #1530/#1667 and the LoRA half of the phased records,
docs/TTT_CASEOPS.md section C): every document gets its own LoRA adapters, scored chunk by chunk,
each chunk by adapters trained on that document's earlier chunks only.

Documents (``documents.py``) go in batches of similar length, longest batch first. Per batch,
step ci takes chunk ci of every document still running: its row is the document's own window
ending at the chunk's end (at most the eval window long, never crossing into another document),
one forward of the model with the batch's adapters scores the chunk's targets (committed at
once), and, unless it is the document's last chunk, the same NLLs' mean is its loss for one AdamW
step over the adapters (the base model stays frozen). Each batch starts from B = 0 (an exact
no-op) and a fresh optimizer; A is drawn per document from a generator seeded by the document's
position, or kept from the previous batch (``ttt.lora.warm_start_a``).

The pieces a phased mode reuses: ``plan_batches``/``takes_batch`` (documents.py), ``BatchAdapters``
(adapters.py; its ``rebuild`` after a global phase), ``score_batch`` and ``without_learning``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from ...model.lora import LoRASet
from ...scoring.bpb import BpbSums
from ...scoring.compiled import pad_rows, padded_width
from ...scoring.receipts import TokenReceipts
from ...scoring.scorer import WindowScorer, commit
from ...scoring.windows import plan_windows
from .adapters import A_SEED, BatchAdapters, batch_adapters
from .batch_fit import BATCH_FIT_NOTE, fit_batch_docs, with_batch_docs
from .common import TTTPass, requires_grad
from .config import TTTConfig
from .documents import Document, find_documents, plan_batches, rank_batches
from .mode import TTTMode, register

PAD_TOKEN = 0  # right padding of short rows; causal attention keeps it out of every scored position


def score_with_lora(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> BpbSums:
    """Score this rank's share of the documents (the caller all-reduces the sums); times 'score'
    and 'adapt' apart. ``run.setup.stride`` plays no part: each chunk is scored in its document's window."""
    scorer = run.scorer
    documents = find_documents(scorer.stream, scorer.num_targets, model.config.bos_id)
    batches = rank_batches(plan_batches(documents, config.lora.batch_docs), run.setup.rank, run.setup.world_size)
    adapters = batch_adapters(model, config, scorer)
    progress = windows_progress(run)
    sums = BpbSums()
    model.eval()
    with requires_grad(model, False):
        for batch in batches:
            adapters.start_batch(batch.docs)
            score_batch(model, run, config, batch.docs, adapters, sums)
            progress(sum(doc.targets for doc in batch.docs))
    return sums


# ---- one batch of documents ----


@dataclass
class ChunkRows:
    """Step ci of a batch: each document's window ending at its chunk ci, right-padded to one width."""

    inputs: torch.Tensor
    """(docs, width) input tokens; a finished document's row is all padding."""
    targets: torch.Tensor
    """(docs, width) the token after each input."""
    scored: torch.Tensor
    """(docs, width) bool: the targets of chunk ci, scored at this step."""
    positions: torch.Tensor
    """(docs, width) stream position of each target (meaningful where scored)."""
    trained: torch.Tensor
    """(docs,) bool: documents with a chunk after ci, which train on chunk ci."""


def chunk_rows(stream: torch.Tensor, docs: Sequence[Document], ci: int, chunk: int, seq_len: int) -> ChunkRows:
    """Rows of step ci: document d's predictions [ci * chunk, end) with end = min((ci + 1) * chunk,
    its targets) are scored in the window of inputs [max(0, end - seq_len), end) of d (C.2)."""
    starts = torch.tensor([doc.start for doc in docs])
    lengths = torch.tensor([doc.targets for doc in docs])
    end = lengths.clamp(max=(ci + 1) * chunk)
    window_start = (end - seq_len).clamp(min=0)
    width = torch.where(lengths > ci * chunk, end - window_start, 0)  # 0: the document is finished
    columns = torch.arange(int(width.max()))
    inside = columns[None, :] < width[:, None]
    index = torch.where(inside, (starts + window_start)[:, None] + columns, 0)
    predictions = window_start[:, None] + columns  # index of each column's prediction in its document
    return ChunkRows(
        inputs=torch.where(inside, stream[index], PAD_TOKEN),
        targets=torch.where(inside, stream[index + 1], PAD_TOKEN),
        scored=inside & (predictions >= ci * chunk),
        positions=index + 1,
        trained=lengths > (ci + 1) * chunk,
    )


def padded_chunk_rows(rows: ChunkRows, docs: int) -> ChunkRows:
    """``rows`` padded to ``docs`` rows and a width that is a multiple of WIDTH_MULTIPLE, with
    padding that is neither scored nor trained (the compiled forward's shapes: ``compiled.py``)."""
    width = padded_width(rows.inputs.shape[1])

    def padded(tensor: torch.Tensor, fill) -> torch.Tensor:
        wide = torch.cat([tensor, tensor.new_full((len(tensor), width - tensor.shape[1]), fill)], dim=1)
        return pad_rows(wide, docs, fill)

    return ChunkRows(padded(rows.inputs, PAD_TOKEN), padded(rows.targets, PAD_TOKEN), padded(rows.scored, False),
                     padded(rows.positions, 0), pad_rows(rows.trained, docs, False))


def adapted_nll(model: torch.nn.Module, scorer: WindowScorer, inputs: torch.Tensor, targets: torch.Tensor,
                adapters: LoRASet) -> torch.Tensor:
    """The scorer's per-target NLL with each row's adapters; compiled, one graph for every width."""
    return scorer.nll(model, inputs.to(scorer.device), targets.to(scorer.device), dynamic_width=True,
                      adapters=adapters)


def score_batch(model: torch.nn.Module, run: TTTPass, config: TTTConfig, docs: Sequence[Document],
                adapters: BatchAdapters, sums: BpbSums) -> None:
    """Score every target of ``docs`` (row b of ``adapters`` is docs[b]'s, already reset), chunk by
    chunk, committing each chunk before the step that trains on it; a document's last chunk is
    never trained on. Every target of every document is committed when this returns."""
    scorer, device = run.scorer, run.scorer.device
    for ci in range(max(doc.num_chunks(config.lora.chunk) for doc in docs)):
        rows = chunk_rows(scorer.stream, docs, ci, config.lora.chunk, scorer.seq_len)
        if scorer.compile_backend is not None:
            rows = padded_chunk_rows(rows, adapters.lora.batch)
        adapt = bool(rows.trained.any()) and run.may_adapt()
        with run.timed("score"), torch.set_grad_enabled(adapt):
            nll = adapted_nll(model, scorer, rows.inputs, rows.targets, adapters.lora)
            scored = rows.scored.to(device)
            commit(scorer.scored_targets(rows.positions[rows.scored], nll.detach()[scored]), sums, run.receipts)
        if adapt:
            with run.timed("adapt"):
                adapters.step(chunk_loss(nll, scored, rows.trained.to(device)))
                note_updates(run.receipts, rows)


def chunk_loss(nll: torch.Tensor, scored: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """Sum over the training documents of the mean NLL of the chunk just scored (the others, in
    their last chunk, contribute no gradient)."""
    per_doc = (nll * scored).sum(dim=1) / scored.sum(dim=1).clamp(min=1)
    return (per_doc * trained).sum()


def note_updates(receipts: TokenReceipts | None, rows: ChunkRows) -> None:
    """One update receipt per document trained: the span of its targets the step used."""
    if receipts is None:
        return
    for doc in torch.nonzero(rows.trained).flatten().tolist():
        used = rows.positions[doc][rows.scored[doc]]
        receipts.note_update(int(used.min()), int(used.max()))


def windows_progress(run: TTTPass) -> Callable[[int], None]:
    """``advance(targets)`` on the pass's progress, which counts windows of the plain evaluation:
    scored targets become the same share of those windows."""
    if run.on_windows is None:
        return lambda targets: None
    scorer = run.scorer
    windows_per_target = len(plan_windows(scorer.num_targets, scorer.seq_len, run.setup.stride)) / scorer.num_targets
    done = {"targets": 0, "windows": 0}

    def advance(targets: int) -> None:
        done["targets"] += targets
        windows = round(done["targets"] * windows_per_target)
        run.on_windows(windows - done["windows"])
        done["windows"] = windows

    return advance

# ---- compile warm-up ----


def warm_up(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> None:
    """One forward, backward and AdamW step at each width the scoring loop starts from
    (lora.chunk and the eval window) on random tokens, with throw-away adapters: kernels and
    allocations are ready before the timed loop (section E). Reads no val token; the base model
    is left bitwise unchanged (only the adapters step)."""
    scorer = run.scorer
    generator = torch.Generator().manual_seed(A_SEED)
    adapters = batch_adapters(model, config, scorer)
    adapters.reset(list(range(config.lora.batch_docs)))
    compiling = scorer.compile_backend is not None
    with requires_grad(model, False):
        for width in dict.fromkeys((min(config.lora.chunk, scorer.seq_len), scorer.seq_len)):
            width = padded_width(width) if compiling else width
            tokens = torch.randint(model.config.vocab_size, (config.lora.batch_docs, width + 1), generator=generator)
            nll = adapted_nll(model, scorer, tokens[:, :-1], tokens[:, 1:], adapters.lora)
            adapters.step(nll.mean(dim=1).sum())
        if compiling:  # a step that trains nothing (every document in its last chunk) scores without grad
            with torch.no_grad():
                adapted_nll(model, scorer, tokens[:, :-1], tokens[:, 1:], adapters.lora)
    adapters.rebuild()


# ---- what the eval stage needs to know ----


def without_learning(config: TTTConfig) -> TTTConfig:
    """The same document windows scored without learning: lora at learning rate 0 (its zero-learning
    test: exactly the plain forward on those windows), and no global phase (the mode is lora)."""
    return replace(config, mode="lora", lora=replace(config.lora, lr=0.0))


MODE = register(TTTMode(
    name="lora",
    help="'lora' (records #1530/#1667) gives each document its own LoRA adapters and scores it ttt.lora.chunk "
         "predictions at a time in its own window of --seq-len tokens, one AdamW step on each scored chunk but its "
         "last (ttt.lora.rank, ttt.lora.lr, ttt.lora.batch_docs documents side by side, ttt.lora.warm_start_a; "
         "--stride plays no part).",
    score=score_with_lora,
    warm_up=warm_up,
    scores_documents=True,
    without_adaptation=without_learning,
    fit_batch=fit_batch_docs,
    with_batch_docs=with_batch_docs,
    memory_keys=("lora.rank", "lora.batch_docs"),
    notes={"batch_fit": BATCH_FIT_NOTE},
))
