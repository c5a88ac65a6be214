"""Score-first test-time training (TTT): adapt the model on val tokens it has already scored.

Every mode scores the val stream chunk by chunk through the plain scorer (``scoring.WindowScorer``:
the model's own forward, with the mode's adapters if it has any) and only then adapts on that
chunk, so a target's NLL is committed before any update that used it, every target is scored
exactly once, and nothing is rescored. One module per mode, each declaring itself in the registry
(``mode.py``: its scorer, warm-up, windows, notes and help); ``common.py`` holds what they share.
Ships inside the artifact: the code that adapts is the code that is counted.

Each mode also has a warm-up (``warm_up_ttt``), run before the timed loop on random tokens only:
it is handed no val data at all, so it cannot train on (or even see) a val token.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from ...scoring.bpb import BpbSums, ByteTable
from ...scoring.receipts import TokenReceipts
from ...scoring.scorer import WindowScorer, finish_warm_up, random_stream
from ...scoring.setup import ScoringSetup
from . import plain, chunk_sgd, lora, phased  # noqa: F401  each registers its TTTMode, in this order
from .common import TTTPass, always
from .config import TTTConfig
from .mode import mode_named


def score_with_ttt(model: torch.nn.Module, tokens: np.ndarray, table: ByteTable, setup: ScoringSetup,
                   sidecar: np.ndarray | None = None, receipts: TokenReceipts | None = None,
                   on_windows: Callable[[int], None] | None = None, *, config: dict, phase=None,
                   may_adapt: Callable[[], bool] = always,
                   on_fact: Callable[[str, object], None] | None = None) -> BpbSums:
    """``score_stream``'s pass (the same arguments, so the eval hands either to ``validate``) with the
    adaptation ``config['mode']`` names: a TTTConfig as a dict, rebuilt and range-checked by the
    shipped TTTConfig. ``phase``, ``may_adapt`` and ``on_fact`` are TTTPass's."""
    ttt = ttt_config(config)
    run = TTTPass(WindowScorer(tokens, table, setup, sidecar), receipts, on_windows, phase, may_adapt, on_fact)
    with training_mode_kept(model):
        return mode_named(ttt.mode, adapting=True).score(model, run, ttt)


def warm_up_ttt(model: torch.nn.Module, table: ByteTable, setup: ScoringSetup, *, config: dict, seed: int = 0) -> None:
    """Run mode ``config['mode']``'s warm-up at the eval's shapes (``setup``), before the timed loop.

    The pass it gets scores a stream of random tokens (``batch_windows`` windows long), not the
    val stream: the records that warmed up on val tokens were challenged, later ones used random
    tokens (docs/TTT_CASEOPS.md sections A.3, E). The tokens come from a generator of their own,
    so the global random state (adapter init) is what it would be without a warm-up. With a
    ``compile_backend`` the mode's compiled forwards are compiled here, at the pass's shapes.
    """
    ttt = ttt_config(config)
    run = TTTPass(WindowScorer(random_stream(model.config.vocab_size, setup, seed), table, setup))
    with training_mode_kept(model):
        mode_named(ttt.mode, adapting=True).warm_up(model, run, ttt)
    finish_warm_up(setup)


def fit_ttt_batch(model: torch.nn.Module, setup: ScoringSetup, *, config: dict) -> dict:
    """The documents per batch a document mode (one that declares ``fit_batch``: lora, phased) runs
    with at ``setup``'s window length, device and precision, and the rule that chose them
    (batch_fit.py), as JSON facts: 'ttt_batch_docs', 'ttt_batch_docs_rule', ..."""
    ttt = ttt_config(config)
    with training_mode_kept(model):
        return mode_named(ttt.mode, adapting=True).fit_batch(model, ttt, setup.seq_len, setup.device,
                                                              setup.autocast_dtype).facts()


def ttt_config(config: dict) -> TTTConfig:
    """The shipped TTTConfig from its dict form (a golf config's ``to_dict``)."""
    return TTTConfig.from_json(config)


@contextmanager
def training_mode_kept(model: torch.nn.Module):
    """Give the model back in the train/eval mode it came in."""
    was_training = model.training
    try:
        yield
    finally:
        model.train(was_training)
