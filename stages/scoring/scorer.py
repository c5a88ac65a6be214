"""Scoring a model on a token stream in windows (``windows.py``), as a ``ScoringSetup`` says: exact
bits per byte from the model's own forward, each target committed once (``receipts.py``)."""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch

from .bpb import BpbSums, ByteTable, TorchByteTable
from .compiled import compiled, mean_loss, pad_rows, token_nll
from .receipts import ScoredTargets, TokenReceipts
from .setup import ScoringSetup
from .windows import Window, plan_windows, usable_targets


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
    scorer = WindowScorer(random_stream(model.config.vocab_size, setup, seed), table, setup)
    was_training = model.training
    scorer.score(model, plan_windows(scorer.num_targets, setup.seq_len, setup.seq_len), setup.batch_windows)
    model.train(was_training)
    finish_warm_up(setup)


def random_stream(vocab_size: int, setup: ScoringSetup, seed: int = 0) -> np.ndarray:
    """A warm-up's stream: ``batch_windows`` windows of random tokens, drawn from a generator of
    their own so that the global random state is what it would be without a warm-up."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (setup.batch_windows * setup.seq_len + 1,), generator=generator).numpy()


def finish_warm_up(setup: ScoringSetup) -> None:
    """On CUDA, wait for the warm-up's kernels, so that they finish inside the 'warmup' bucket."""
    if torch.device(setup.device).type == "cuda":
        torch.cuda.synchronize(setup.device)
