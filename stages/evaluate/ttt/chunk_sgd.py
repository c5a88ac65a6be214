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

import torch

from ...ranges import ConfigError
from ..bpb import BpbSums
from ..scoring import TokenReceipts, WindowScorer, plan_windows, score_windows
from .common import TTTPass, chunk_sequence_starts, cosine_lr, plan_chunks
from .config import TTTConfig


def score_with_chunk_sgd(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> BpbSums:
    """Score every target once, adapting between chunks; times 'score' and 'adapt' apart.

    One process only: the records' per-step gradient all-reduce across ranks is not implemented,
    so ``run.world_size`` must be 1.
    """
    if run.world_size != 1:
        raise ConfigError("ttt.mode", f"chunk-sgd runs in one process, not {run.world_size}")
    scorer = run.scorer
    chunks = plan_chunks(plan_windows(scorer.num_targets, scorer.seq_len, run.stride), config.chunk_tokens,
                         scorer.num_targets)
    optimizer = torch.optim.SGD(trained_parameters(model, config.freeze_blocks), lr=config.lr,
                                momentum=config.momentum)
    sums = BpbSums()
    for chunk, windows in enumerate(chunks):
        with run.timed("score"):
            score_windows(model, scorer, windows, run.batch_windows, sums, run.receipts, run.on_windows)
        if chunk == len(chunks) - 1 or not run.may_adapt():
            continue  # the last chunk would train a model nothing scores; past the budget, only score
        with run.timed("adapt"):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(config.lr, chunk, len(chunks))
            starts = chunk_sequence_starts(chunk, config.chunk_tokens, scorer.num_targets, scorer.seq_len)
            train_on_chunk(model, optimizer, scorer, starts, config, run.receipts)
    return sums


def trained_parameters(model: torch.nn.Module, freeze_blocks: int) -> list[torch.nn.Parameter]:
    """Every parameter but those of the first ``freeze_blocks`` blocks (which stop needing grads)."""
    blocks = model.blocks
    if freeze_blocks > len(blocks):
        raise ConfigError("ttt.freeze_blocks", f"must be at most the model's {len(blocks)} blocks, got {freeze_blocks}")
    frozen = {id(p) for block in blocks[:freeze_blocks] for p in block.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) not in frozen)
    return [p for p in model.parameters() if id(p) not in frozen]


def train_on_chunk(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scorer: WindowScorer,
                   starts: list[int], config: TTTConfig, receipts: TokenReceipts | None) -> None:
    """``epochs`` passes over the sequences at ``starts``, ``batch_seqs`` sequences per SGD step."""
    if not starts:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    offsets = torch.arange(scorer.seq_len + 1)
    model.train()
    for _ in range(config.epochs):
        for first in range(0, len(starts), config.batch_seqs):
            batch = torch.tensor(starts[first : first + config.batch_seqs])
            rows = scorer.stream[batch[:, None] + offsets].to(scorer.device)
            optimizer.zero_grad(set_to_none=True)
            training_loss(model, scorer, rows).backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if receipts is not None:  # the targets of sequence s are positions s + 1 .. s + seq_len
                receipts.note_update(int(batch.min()) + 1, int(batch.max()) + scorer.seq_len)
    model.eval()


def training_loss(model: torch.nn.Module, scorer: WindowScorer, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of ``rows`` (each ``seq_len + 1`` tokens) at the scorer's precision."""
    device_type = torch.device(scorer.device).type
    with torch.autocast(device_type=device_type, dtype=scorer.autocast_dtype,
                        enabled=scorer.autocast_dtype is not None):
        return model.loss(rows[:, :-1], rows[:, 1:])


def warm_up(model: torch.nn.Module, run: TTTPass, config: TTTConfig) -> None:
    """Before the timed loop: one scoring batch and one training forward and backward, at the shapes
    the pass will use, on random tokens (``run`` scores a random stream: ``warm_up_ttt``). No
    optimizer step: the gradients are cleared after, so the weights are bitwise unchanged."""
    scorer = run.scorer
    scorer.score(model, plan_windows(scorer.num_targets, scorer.seq_len, scorer.seq_len)[: run.batch_windows])
    # A training step's batch: batch_seqs sequences, or as many as one chunk holds (train_on_chunk).
    batch = max(1, min(config.batch_seqs, config.chunk_tokens // scorer.seq_len))
    rows = torch.randint(0, model.config.vocab_size, (batch, scorer.seq_len + 1),
                         generator=torch.Generator().manual_seed(0)).to(scorer.device)
    model.train()
    try:
        training_loss(model, scorer, rows).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
