"""What every TTT mode shares: the pass it runs in (``TTTPass``), the chunk plan, the training
sequences of a scored chunk, each rank's share of them, the learning-rate schedule over chunks,
one SGD step on whole sequences, and timing each phase into its own ledger bucket.

Targets are numbered as in ``scoring``: target j is token j + 1 of the stream (its position).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.distributed as dist

from ...scoring.bpb import BpbSums
from ...scoring.compiled import IGNORE, pad_rows
from ...scoring.receipts import TokenReceipts
from ...scoring.scorer import WindowScorer, score_windows
from ...scoring.setup import ScoringSetup
from ...scoring.windows import Window


def always(stopped_elsewhere: bool = False) -> bool:
    """The ``may_adapt`` of a pass without a budget: adaptation is always allowed."""
    return not stopped_elsewhere


@dataclass
class TTTPass:
    """One scored pass over the val stream with adaptation: how it is scored, which rank this is,
    and where the scores, the timings and the budget's verdict come from and go to."""

    scorer: WindowScorer
    """The val stream (truncated to whole windows), its bytes, and the plain scorer every mode scores
    with; its ``setup`` says the windows, the batch and this rank's share."""
    receipts: TokenReceipts | None = None
    """Where each committed target and each update is noted, if anywhere."""
    on_windows: Callable[[int], None] | None = None
    """Called with the number of windows just scored (progress)."""
    phase: Callable[[str], ContextManager] | None = None
    """``phase(name)`` times a block into the ledger bucket ``name`` ('score', 'adapt', ...)."""
    may_adapt: Callable[..., bool] = always
    """Asked before each adaptation step: False once the eval budget says stop adapting (scoring goes on).
    Each rank asks its own; before an update all ranks take together, ``may_adapt_together`` agrees
    and tells a rank whose own budget said yes that another's stopped (``stopped_elsewhere=True``)."""
    on_fact: Callable[[str, object], None] | None = None
    """Called with (name, JSON value) for a fact about the pass that the eval's metrics keep (phased: its phases)."""

    @property
    def setup(self) -> ScoringSetup:
        """The windows, the batch per forward and this rank's share (``scorer.setup``)."""
        return self.scorer.setup

    def note(self, name: str, value: object) -> None:
        """State a fact about the pass (see ``on_fact``)."""
        if self.on_fact is not None:
            self.on_fact(name, value)

    def may_adapt_together(self) -> bool:
        """``may_adapt`` as every rank agrees (False if any rank says False), for the checks all ranks
        reach together before a collective update (chunk-sgd's chunks, the global SGD phases): no
        rank may skip an update the others then wait for in its all-reduce."""
        allowed = self.may_adapt()
        if self.setup.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(allowed)], device=self.scorer.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if allowed and not flag.item():
                allowed = self.may_adapt(stopped_elsewhere=True)  # so this rank's record says where
        return allowed

    def timed(self, name: str):
        """Time a block into ``phase(name)``; see ``timed``."""
        return timed(self.phase, name, self.scorer.device)

    def score_share(self, model: torch.nn.Module, windows: list[Window], sums: BpbSums) -> None:
        """Score this rank's contiguous share of ``windows`` (the records' split) into ``sums``; the
        receipts then count the steps of the rank with the largest share, so that an update after
        this follows every rank's scoring in ``order`` (see ``TokenReceipts``)."""
        share = rank_share(windows, self.setup.rank, self.setup.world_size)
        first_step = self.receipts.steps if self.receipts is not None else 0
        score_windows(model, self.scorer, share, self.setup.batch_windows, sums, self.receipts, self.on_windows)
        if self.receipts is not None:
            largest = max(len(rank_share(windows, r, self.setup.world_size)) for r in range(self.setup.world_size))
            self.receipts.catch_up(first_step + math.ceil(largest / self.setup.batch_windows))


    def step_rows(self, batch_seqs: int, chunk_tokens: int) -> int:
        """The most sequences one rank trains on in a step of ``batch_seqs`` sequences (over all
        ranks) drawn from chunks of ``chunk_tokens``: the rows its warm-up runs, and, compiled,
        the static row count every step is padded to (``train_sequences``); 0 when eager."""
        per_step = max(1, min(batch_seqs, chunk_tokens // self.scorer.seq_len))
        return math.ceil(per_step / self.setup.world_size)

    def pad_to(self, batch_seqs: int, chunk_tokens: int) -> int:
        """Rows a compiled training step is padded to (``step_rows``); 0 (no padding) when eager."""
        return 0 if self.scorer.compile_backend is None else self.step_rows(batch_seqs, chunk_tokens)


def rank_share(items: list, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous slice of ``items``; the slices of all ranks cover them once, in
    order, and differ in length by at most one."""
    return items[len(items) * rank // world_size : len(items) * (rank + 1) // world_size]


def plan_chunks(windows: list[Window], chunk_tokens: int, num_targets: int) -> list[list[Window]]:
    """Windows grouped by the chunk of their first scored target (the records' rule).

    Chunk c holds targets [c * chunk_tokens, (c + 1) * chunk_tokens); a window that reaches into
    the next chunk is scored with this one, before any update on either, so every target of
    chunk c is committed once chunk c's windows are.
    """
    num_chunks = math.ceil(num_targets / chunk_tokens)
    chunks: list[list[Window]] = [[] for _ in range(num_chunks)]
    for window in windows:
        first_scored = window.start + window.score_from
        chunks[min(first_scored // chunk_tokens, num_chunks - 1)].append(window)
    return chunks


def chunk_sequence_starts(chunk: int, chunk_tokens: int, num_targets: int, seq_len: int) -> list[int]:
    """Starts of the whole ``seq_len`` training sequences inside chunk ``chunk``'s targets.

    A sequence from s trains on targets [s, s + seq_len), all inside the chunk; a chunk (or its
    tail) shorter than ``seq_len`` is not trained on.
    """
    first = chunk * chunk_tokens
    end = min(first + chunk_tokens, num_targets)
    return list(range(first, end - seq_len + 1, seq_len))


def cosine_lr(peak: float, chunk: int, num_chunks: int) -> float:
    """``peak`` at the first chunk, decayed on a half cosine to 0 at the last one."""
    if num_chunks <= 1:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * chunk / (num_chunks - 1)))


def train_sequences(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                    run: TTTPass, tokens: torch.Tensor, starts: list[int], batch_seqs: int, epochs: int,
                    grad_clip: float, note: Callable[[list[int], torch.Tensor], None], pad_to: int = 0) -> int:
    """``epochs`` passes over the ``seq_len`` sequences of ``tokens`` at ``starts``, ``batch_seqs`` of
    them per SGD step over all ranks, each rank its contiguous slice (``sgd_step`` weighs it by its
    share, padded to ``pad_to`` rows); ``note(step's starts, this rank's starts)`` after each step,
    for the update receipts. Returns the number of SGD steps taken."""
    offsets = torch.arange(run.scorer.seq_len + 1)
    steps = 0
    for _ in range(epochs):
        for first in range(0, len(starts), batch_seqs):
            step = starts[first : first + batch_seqs]
            mine = torch.tensor(rank_share(step, run.setup.rank, run.setup.world_size), dtype=torch.int64)
            rows = tokens[mine[:, None] + offsets].to(run.scorer.device)
            sgd_step(loss_fn, optimizer, rows, grad_clip, run.scorer.autocast_dtype, share=len(mine) / len(step),
                     pad_to=pad_to)
            note(step, mine)
            steps += 1
    return steps


def sgd_step(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
             rows: torch.Tensor, grad_clip: float, autocast_dtype: torch.dtype | None, share: float = 1.0,
             pad_to: int = 0) -> None:
    """One optimizer step on ``rows`` (each a sequence plus its next token: inputs, then targets
    shifted by one): ``loss_fn``'s mean loss times ``share``, backward, gradients summed over the
    ranks when a process group is initialized, clipped to ``grad_clip`` (0: not clipped), step.
    Fewer rows than ``pad_to`` are padded with rows whose targets the loss ignores (a compiled
    step keeps one shape; the loss and its gradient are those of ``rows``).

    With ranks, each passes its fraction of the step's sequences as ``share``, so that the summed
    gradient is the mean over the whole step's sequences whatever the split (the records' average
    when the ranks hold equal slices). A rank without rows still joins the sum with zeros.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    if len(rows):
        (autocast_loss(loss_fn, rows, autocast_dtype, pad_to) * share).backward()
    if dist.is_available() and dist.is_initialized():
        sum_gradients(params)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def autocast_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], rows: torch.Tensor,
                  autocast_dtype: torch.dtype | None, pad_to: int = 0) -> torch.Tensor:
    """``loss_fn``'s mean loss on ``rows`` (inputs, then targets shifted by one) at the pass's
    precision; padded to ``pad_to`` rows of token 0 whose targets are ignored."""
    inputs, targets = pad_rows(rows[:, :-1], pad_to, 0), pad_rows(rows[:, 1:], pad_to, IGNORE)
    with torch.autocast(device_type=rows.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return loss_fn(inputs, targets)


def warm_up_backward(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     rows: torch.Tensor, autocast_dtype: torch.dtype | None) -> None:
    """One training forward and backward of every base weight at a step's shapes (random ``rows``),
    and no optimizer step: the gradients are dropped after, so the weights stay bitwise as they were."""
    model.train()
    try:
        with requires_grad(model, True):
            autocast_loss(loss_fn, rows, autocast_dtype).backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every gradient over the ranks (missing ones as zeros), so all ranks step identically."""
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)  # SUM: gloo has no AVG


@contextmanager
def timed(phase, name: str, device: torch.device | str):
    """Time a block into ``phase(name)`` (a ledger's measure) if given; on CUDA wait for the queued
    kernels at the end, so that the seconds land in the phase that ran them."""
    with phase(name) if phase is not None else nullcontext():
        yield
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)


@contextmanager
def requires_grad(model: torch.nn.Module, flag: bool):
    """Every base weight takes gradients (``flag``) or none does (LoRA trains adapters only) inside
    the block; each weight's own flag comes back after."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(flag)
    try:
        yield
    finally:
        for param, previous in flags:
            param.requires_grad_(previous)
