"""Score-first test-time training (TTT): adapt the model on val tokens it has already scored.

Every mode scores the val stream chunk by chunk through the plain scorer (``scoring.WindowScorer``:
the model's own forward, with the mode's adapters if it has any) and only then adapts on that
chunk, so a target's NLL is committed before any update that used it, every target is scored
exactly once, and nothing is rescored. One module per mode; ``common.py`` holds what they share.
Ships inside the artifact: the code that adapts is the code that is counted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..bpb import BpbSums, ByteTable
from ..scoring import TokenReceipts, WindowScorer
from .chunk_sgd import score_with_chunk_sgd
from .common import TTTPass, always
from .config import TTTConfig
from .lora import score_with_lora
from .phased import score_with_phased

# mode -> its scorer: score_with_MODE(model, TTTPass, TTTConfig) -> BpbSums.
MODES = {"chunk-sgd": score_with_chunk_sgd, "lora": score_with_lora, "phased": score_with_phased}


def score_with_ttt(
    model: torch.nn.Module,
    tokens: np.ndarray,
    table: ByteTable,
    seq_len: int,
    stride: int,
    batch_windows: int = 8,
    device: torch.device | str = "cpu",
    sidecar: np.ndarray | None = None,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    on_windows: Callable[[int], None] | None = None,
    *,
    config: dict,
    receipts: TokenReceipts | None = None,
    phase=None,
    may_adapt: Callable[[], bool] = always,
    on_fact: Callable[[str, object], None] | None = None,
) -> BpbSums:
    """``score_stream`` with the adaptation ``config['mode']`` names (a TTTConfig as a dict, rebuilt
    and range-checked by the shipped TTTConfig); ``phase``, ``may_adapt`` and ``on_fact`` are TTTPass's."""
    ttt = TTTConfig(**{**config, "lora_targets": tuple(config.get("lora_targets", TTTConfig.lora_targets))})
    scorer = WindowScorer(tokens, table, seq_len, device, sidecar, autocast_dtype)
    run = TTTPass(scorer, stride, batch_windows, rank, world_size, receipts, on_windows, phase, may_adapt, on_fact)
    was_training = model.training
    try:
        return MODES[ttt.mode](model, run, ttt)
    finally:
        model.train(was_training)
