"""Chunk-SGD TTT (records #1413/#1477/#1493, docs/TTT_CASEOPS.md section B): score a chunk of the
val stream, then train the whole model on that chunk with SGD, then score the next chunk.

Per chunk c: score every window whose first scored target is in the chunk (no_grad, the plain
scorer); then, unless c is the last chunk, run ``epochs`` passes of SGD over the chunk's whole
``seq_len`` sequences, whose targets are exactly chunk c's (already committed) targets, at a
learning rate cosine-decayed over chunks. One optimizer for the whole eval, so the momentum
buffer carries over. Training calls the model's own ``loss``; nothing is rescored, and the
adapted model is discarded.
"""

from __future__ import annotations

from functools import partial

import torch

from ...ranges import ConfigError
from ...scoring.bpb import BpbSums
from ...scoring.windows import plan_windows
from .common import TTTPass, chunk_sequence_starts, cosine_lr, plan_chunks, train_sequences, warm_up_backward
from .config import ChunkSGDConfig, TTTConfig
from .mode import TTTMode, register


def score_with_chunk_sgd(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> BpbSums:
    """Score every target once, adapting between chunks; times 'score' and 'adapt' apart.

    Under W ranks (record #1413's split) each rank scores its contiguous share of a chunk's
    windows and returns its own sums (the caller all-reduces them); every optimizer step takes
    ``batch_seqs`` sequences over all ranks, each rank its contiguous share, and the gradients
    are averaged over all of them before clipping, so every rank takes the same step and W ranks
    follow 1 rank's trajectory (up to the order floats are summed in).
    """
    scorer, settings = run.scorer, config.chunk_sgd
    chunks = plan_chunks(plan_windows(scorer.num_targets, scorer.seq_len, run.setup.stride), settings.chunk_tokens,
                         scorer.num_targets)
    optimizer = torch.optim.SGD(trained_parameters(model, settings.freeze_blocks), lr=settings.lr,
                                momentum=settings.momentum)
    sums = BpbSums()
    for chunk, windows in enumerate(chunks):
        with run.timed("score"):
            run.score_share(model, windows, sums)
        if chunk == len(chunks) - 1 or not run.may_adapt_together():
            continue  # the last chunk would train a model nothing scores; past the budget, only score
        with run.timed("adapt"):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(settings.lr, chunk, len(chunks))
            starts = chunk_sequence_starts(chunk, settings.chunk_tokens, scorer.num_targets, scorer.seq_len)
            train_on_chunk(model, optimizer, run, starts, settings)
    return sums


def trained_parameters(model: torch.nn.Module, freeze_blocks: int) -> list[torch.nn.Parameter]:
    """Every parameter but those of the first ``freeze_blocks`` blocks (which stop needing grads)."""
    blocks = model.blocks
    if freeze_blocks > len(blocks):
        raise ConfigError("ttt.chunk_sgd.freeze_blocks",
                          f"must be at most the model's {len(blocks)} blocks, got {freeze_blocks}")
    frozen = {id(p) for block in blocks[:freeze_blocks] for p in block.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) not in frozen)
    return [p for p in model.parameters() if id(p) not in frozen]


def train_on_chunk(model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: TTTPass, starts: list[int],
                   config: ChunkSGDConfig) -> None:
    """``epochs`` passes over the sequences at ``starts``, ``batch_seqs`` sequences (over all ranks)
    per SGD step."""
    if not starts:
        return
    model.train()
    train_sequences(run.scorer.training_loss(model), optimizer, run, run.scorer.stream, starts, config.batch_seqs,
                    config.epochs, config.grad_clip, partial(note_chunk_step, run),
                    run.pad_to(config.batch_seqs, config.chunk_tokens))
    model.eval()


def note_chunk_step(run: TTTPass, step: list[int], mine: torch.Tensor) -> None:
    """One step of all ranks: rank 0 notes it. The targets of sequence s are positions s + 1 .. s + seq_len."""
    if run.receipts is not None and run.setup.rank == 0:
        run.receipts.note_update(min(step) + 1, max(step) + run.scorer.seq_len)


def warm_up(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> None:
    """Before the timed loop: one scoring batch and one training forward and backward, at the shapes
    the pass will use, on random tokens (``run`` scores a random stream: ``warm_up_ttt``). No
    optimizer step, so the weights are bitwise unchanged."""
    scorer = run.scorer
    windows = plan_windows(scorer.num_targets, scorer.seq_len, scorer.seq_len)[: run.setup.batch_windows]
    scorer.score(model, windows, run.setup.batch_windows)
    # A training step's batch: this rank's share of batch_seqs sequences, or of as many as one chunk holds.
    settings = config.chunk_sgd
    rows = torch.randint(0, model.config.vocab_size, (run.step_rows(settings.batch_seqs, settings.chunk_tokens),
                                                      scorer.seq_len + 1),
                         generator=torch.Generator().manual_seed(0)).to(scorer.device)
    warm_up_backward(model, scorer.training_loss(model), rows, scorer.autocast_dtype)


MODE = register(TTTMode(
    name="chunk-sgd",
    help="'chunk-sgd' (records #1413/#1477/#1493) scores each chunk of ttt.chunk_sgd.chunk_tokens targets, then "
         "trains every weight on it with SGD (ttt.chunk_sgd.lr cosine over chunks, ttt.chunk_sgd.momentum, "
         "ttt.chunk_sgd.epochs, ttt.chunk_sgd.grad_clip, ttt.chunk_sgd.freeze_blocks); the records run it with "
         "--seq-len 2048 --stride 64.",
    score=score_with_chunk_sgd,
    warm_up=warm_up,
))
