"""What every TTT mode shares: the pass it runs in (``TTTPass``), the chunk plan, the training
sequences of a scored chunk, each rank's share of them, the learning-rate schedule over chunks,
and timing each phase into its own ledger bucket.

Targets are numbered as in ``scoring``: target j is token j + 1 of the stream (its position).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from ..bpb import BpbSums
from ..scoring import TokenReceipts, Window, WindowScorer, score_windows


def always() -> bool:
    return True


@dataclass
class TTTPass:
    """One scored pass over the val stream with adaptation: how it is scored, which rank this is,
    and where the scores, the timings and the budget's verdict come from and go to."""

    scorer: WindowScorer
    """The val stream (truncated to whole windows), its bytes, and the plain scorer every mode scores with."""
    stride: int
    """Sliding-window stride of the stream's windows (seq_len: non-overlapping)."""
    batch_windows: int
    """Windows (or document rows) per scoring forward."""
    rank: int = 0
    """This process's rank."""
    world_size: int = 1
    """Processes sharing the pass."""
    receipts: TokenReceipts | None = None
    """Where each committed target and each update is noted, if anywhere."""
    on_windows: Callable[[int], None] | None = None
    """Called with the number of windows just scored (progress)."""
    phase: Callable[[str], ContextManager] | None = None
    """``phase(name)`` times a block into the ledger bucket ``name`` ('score', 'adapt', ...)."""
    may_adapt: Callable[[], bool] = always
    """Asked before each adaptation step: False once the eval budget says stop adapting (scoring goes on).
    Under several ranks it must answer alike on every rank (they meet in each update's all-reduce)."""

    def timed(self, name: str):
        """Time a block into ``phase(name)``; see ``timed``."""
        return timed(self.phase, name, self.scorer.device)

    def score_share(self, model: torch.nn.Module, windows: list[Window], sums: BpbSums) -> None:
        """Score this rank's contiguous share of ``windows`` (the records' split) into ``sums``; the
        receipts then count the steps of the rank with the largest share, so that an update after
        this follows every rank's scoring in ``order`` (see ``TokenReceipts``)."""
        share = rank_share(windows, self.rank, self.world_size)
        first_step = self.receipts.steps if self.receipts is not None else 0
        score_windows(model, self.scorer, share, self.batch_windows, sums, self.receipts, self.on_windows)
        if self.receipts is not None:
            largest = max(len(rank_share(windows, r, self.world_size)) for r in range(self.world_size))
            self.receipts.catch_up(first_step + math.ceil(largest / self.batch_windows))


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


@contextmanager
def timed(phase, name: str, device: torch.device | str):
    """Time a block into ``phase(name)`` (a ledger's measure) if given; on CUDA wait for the queued
    kernels at the end, so that the seconds land in the phase that ran them."""
    with phase(name) if phase is not None else nullcontext():
        yield
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
