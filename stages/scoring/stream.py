"""Scoring a model on the val stream: non-overlapping or sliding windows, exact bits per byte.

The val stream is truncated to whole windows of ``seq_len`` targets, as the challenge does.
Non-overlapping (stride == seq_len): every window scores all its positions. Sliding: the first
window scores all its positions, each later one only its last ``stride``, so every target is
scored exactly once with at least ``seq_len - stride`` tokens of context.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from .bpb import BpbSums, ByteTable, TorchByteTable
from .compiled import compiled, mean_loss, pad_rows, token_nll
from .setup import ScoringSetup


@dataclass(frozen=True)
class Window:
    """Inputs are tokens[start : start + seq_len]; positions >= score_from are scored."""

    start: int
    score_from: int


def usable_targets(num_tokens: int, seq_len: int) -> int:
    """Targets kept after truncating the stream to whole windows (the challenge's rule)."""
    return ((num_tokens - 1) // seq_len) * seq_len


def plan_windows(num_targets: int, seq_len: int, stride: int) -> list[Window]:
    """Windows covering targets [0, num_targets) so that each is scored exactly once."""
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    if num_targets < seq_len:
        raise ValueError(f"need at least {seq_len} targets, have {num_targets}")
    windows = [Window(0, 0)]
    scored_to = seq_len
    while scored_to < num_targets:
        end = min(scored_to + stride, num_targets)
        start = end - seq_len
        windows.append(Window(start, scored_to - start))
        scored_to = end
    return windows


@dataclass
class ScoredTargets:
    """One batch of scored targets, as committed: each target's score is final once it is here."""

    positions: torch.Tensor
    """Index of each target in the val token stream (int64; the first target is position 1)."""
    nll: torch.Tensor
    """Its NLL in nats (float32, as the loss computes it)."""
    bytes: torch.Tensor
    """Its bytes (int64)."""


class WindowScorer:
    """Scores batches of windows of one token stream with the model's own forward, under no_grad.

    Plain evaluation and every test-time-training mode score through this one class, so that
    with adaptation off they produce the very same numbers. The ``setup``'s window length, device,
    autocast and compile backend are its own (``seq_len``, ...); compiled, its forwards go through
    ``compiled.py``. ``sidecar`` (one byte count per token, from the original text) replaces the
    byte table when given.
    """

    def __init__(self, tokens: np.ndarray, table: ByteTable, setup: ScoringSetup, sidecar: np.ndarray | None = None):
        self.setup = setup
        self.seq_len = setup.seq_len
        self.device = setup.device
        self.autocast_dtype = setup.autocast_dtype
        self.compile_backend = setup.compile_backend
        self.num_targets = usable_targets(len(tokens), self.seq_len)
        self.stream = torch.as_tensor(np.asarray(tokens[: self.num_targets + 1], dtype=np.int64))
        self.side = None if sidecar is None else torch.as_tensor(
            np.asarray(sidecar[: self.num_targets + 1], dtype=np.int64))
        self.byte_table = TorchByteTable(table, self.device)
        self.offsets = torch.arange(self.seq_len + 1)

    @torch.no_grad()
    def score(self, model: torch.nn.Module, batch: list[Window], rows: int = 0) -> ScoredTargets:
        """The NLL and bytes of every target the windows of ``batch`` score (the model in eval mode).
        Compiled, a batch of fewer than ``rows`` windows is padded with copies of its last one
        (one static shape), whose scores are dropped."""
        model.eval()
        starts = torch.tensor([w.start for w in batch])
        if self.compile_backend is not None:
            starts = pad_rows(starts, rows, batch[-1].start)
        chunk = self.stream[starts[:, None] + self.offsets].to(self.device)
        nll = self.nll(model, chunk[:, :-1], chunk[:, 1:])[: len(batch)]
        index = starts[: len(batch), None] + self.offsets
        scored = torch.arange(self.seq_len)[None, :] >= torch.tensor([w.score_from for w in batch])[:, None]
        return self.scored_targets(index[:, 1:][scored], nll[scored.to(self.device)])

    def nll(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, dynamic_width: bool = False,
            **forward) -> torch.Tensor:
        """Per-target NLL (float32, shaped like ``targets``) of the model's own forward under this
        scorer's autocast; ``forward`` goes to the model (test-time training passes its adapters).
        ``dynamic_width``: compiled, one graph serves every width (document LoRA's growing rows)."""
        device_type = torch.device(self.device).type
        extra = {} if self.compile_backend is None else {"dynamic_width": dynamic_width}
        with torch.autocast(device_type=device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            return compiled(token_nll, self.compile_backend)(model, inputs, targets, **extra, **forward)

    def training_loss(self, model: torch.nn.Module, **forward) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``loss(inputs, targets)``: the model's own mean loss (``forward`` to the model), compiled
        when this scorer compiles; the caller sets the autocast (``ttt.common.autocast_loss``)."""
        if self.compile_backend is None:
            return partial(model.loss, **forward)
        return partial(compiled(mean_loss, self.compile_backend), model, **forward)

    def scored_targets(self, positions: torch.Tensor, nll: torch.Tensor) -> ScoredTargets:
        """The targets at stream ``positions`` (CPU int64) with their ``nll``, and their bytes."""
        return ScoredTargets(positions, nll, self.target_bytes(positions))

    def target_bytes(self, positions: torch.Tensor) -> torch.Tensor:
        """Bytes of the targets at stream ``positions`` (CPU int64): the sidecar's when there is one,
        else the byte table's, given the true token before each target."""
        if self.side is not None:
            return self.side[positions].to(self.device)
        return self.byte_table.target_bytes(self.stream[positions - 1].to(self.device),
                                            self.stream[positions].to(self.device))


def model_nll(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
              autocast_dtype: torch.dtype | None = None, **forward) -> torch.Tensor:
    """Per-target NLL (float32, shaped like ``targets``) of the model's forward under autocast at
    ``autocast_dtype`` (None: off), eager (``compiled.token_nll``)."""
    with torch.autocast(device_type=inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return token_nll(model, inputs, targets, **forward)


class TokenReceipts:
    """Every committed target, in commit order: the per-target record ``golf eval --token-nll`` saves.

    ``order`` is the scoring step (one batch of windows) that committed a target; a test-time
    trainer also notes each update, so that anyone can check it used committed targets only.

    Under W ranks each rank keeps its own receipts and counts its own steps; a rank's step k is
    global step k, and ``order`` = step * W + rank, so the orders of all ranks form one sequence
    (W = 1: the step). Ranks meet only at an update (a gradient all-reduce): before one, each
    rank ``catch_up``s to the steps the busiest rank has scored, so that an update's
    ``update_after_order`` (the last order it may use) covers what every rank committed before it,
    and every target committed after it has a larger order. An update all ranks take together (one
    averaged gradient) is noted by rank 0 alone. ``merge_receipts`` joins the ranks' receipts.
    """

    def __init__(self) -> None:
        self.batches: list[ScoredTargets] = []
        self.batch_steps: list[int] = []  # the step that committed each batch
        self.updates: list[tuple[int, int, int]] = []  # (steps taken before it, first, last position)
        self.steps = 0  # scoring steps taken so far (by the busiest rank, after a catch_up)

    def commit(self, scored: ScoredTargets) -> None:
        self.batches.append(ScoredTargets(scored.positions.cpu(), scored.nll.cpu(), scored.bytes.cpu()))
        self.batch_steps.append(self.steps)
        self.steps += 1

    def catch_up(self, steps: int) -> None:
        """Every rank has taken ``steps`` scoring steps by now; this rank's next step comes after them."""
        self.steps = max(self.steps, steps)

    def note_update(self, first_position: int, last_position: int) -> None:
        """An optimizer step that trained on targets ``first_position..last_position``, after the
        scoring steps taken so far."""
        self.updates.append((self.steps, first_position, last_position))

    def tensors(self, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """Rows per target (position, nll, bytes, order) and per update (update_*), as saved."""
        sizes = torch.tensor([len(b.positions) for b in self.batches], dtype=torch.int64)
        steps = torch.tensor(self.batch_steps, dtype=torch.int64)
        updates = torch.tensor(self.updates, dtype=torch.int64).reshape(-1, 3)
        batches = self.batches or [ScoredTargets(torch.zeros(0, dtype=torch.int64), torch.zeros(0),
                                                 torch.zeros(0, dtype=torch.int64))]
        return {
            "position": torch.cat([b.positions for b in batches]),
            "nll": torch.cat([b.nll for b in batches]).float(),
            "bytes": torch.cat([b.bytes for b in batches]).int(),
            "order": torch.repeat_interleave(steps * world_size + rank, sizes),
            "update_after_order": (updates[:, 0] * world_size - 1).contiguous(),
            "update_first_position": updates[:, 1].contiguous(),
            "update_last_position": updates[:, 2].contiguous(),
        }


def merge_receipts(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One receipts table from every rank's ``tensors``: targets and updates each in order (an
    optimizer step that all ranks take together is noted by rank 0 alone)."""
    merged = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    targets = torch.sort(merged["order"], stable=True).indices
    updates = torch.sort(merged["update_after_order"], stable=True).indices
    return {name: column[updates if name.startswith("update_") else targets] for name, column in merged.items()}


def score_windows(model: torch.nn.Module, scorer: WindowScorer, windows: list[Window], batch_windows: int,
                  sums: BpbSums, receipts: TokenReceipts | None = None,
                  on_windows: Callable[[int], None] | None = None) -> None:
    """Score ``windows`` in batches, adding each batch to ``sums`` (and ``receipts``) as it is committed."""
    for first in range(0, len(windows), batch_windows):
        batch = windows[first : first + batch_windows]
        commit(scorer.score(model, batch, batch_windows), sums, receipts)
        if on_windows is not None:
            on_windows(len(batch))


def commit(scored: ScoredTargets, sums: BpbSums, receipts: TokenReceipts | None = None) -> None:
    """Add scored targets to the sums (and the receipts): from here on their scores are final."""
    sums.add(scored.nll.double().sum().item(), scored.bytes.sum().item(), scored.nll.numel())
    if receipts is not None:
        receipts.commit(scored)


def score_stream(model: torch.nn.Module, tokens: np.ndarray, table: ByteTable, setup: ScoringSetup,
                 sidecar: np.ndarray | None = None, receipts: TokenReceipts | None = None,
                 on_windows: Callable[[int], None] | None = None) -> BpbSums:
    """Sum NLL and bytes over this rank's share of the windows (all-reduce the result for the total).

    ``sidecar`` (one byte count per token, from the original text) replaces the table when given;
    ``receipts`` keeps each committed target; ``on_windows`` is told how many windows each batch scored.
    """
    scorer = WindowScorer(tokens, table, setup, sidecar)
    windows = plan_windows(scorer.num_targets, setup.seq_len, setup.stride)[setup.rank::setup.world_size]
    sums = BpbSums()
    was_training = model.training
    score_windows(model, scorer, windows, setup.batch_windows, sums, receipts, on_windows)
    model.train(was_training)
    return sums


def warm_up_scoring(model: torch.nn.Module, table: ByteTable, setup: ScoringSetup, seed: int = 0) -> None:
    """Before the timed pass: one scoring batch at its shape, on random tokens (no val data), so the
    compiled forward is compiled here; the weights are untouched."""
    generator = torch.Generator().manual_seed(seed)
    seq_len, batch_windows = setup.seq_len, setup.batch_windows
    stream = torch.randint(0, model.config.vocab_size, (batch_windows * seq_len + 1,), generator=generator)
    scorer = WindowScorer(stream.numpy(), table, setup)
    was_training = model.training
    scorer.score(model, plan_windows(scorer.num_targets, seq_len, seq_len), batch_windows)
    model.train(was_training)
    if torch.device(setup.device).type == "cuda":  # its kernels finish inside the 'warmup' bucket
        torch.cuda.synchronize(setup.device)


def count_windows(num_tokens: int, seq_len: int, stride: int) -> int:
    return len(plan_windows(usable_targets(num_tokens, seq_len), seq_len, stride))
