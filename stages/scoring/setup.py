"""How a token stream is scored (``ScoringSetup``): the one record the scorer, its warm-up, every
test-time training mode and ``validate`` take, in place of the same long list of arguments."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoringSetup:
    """The windows, the batch per forward, where and at what precision the forward runs, whether it
    is compiled, and this process's share of the windows. What is scored (the tokens, their byte
    table, a byte sidecar) is passed beside it: a warm-up gets this setup and no val tokens."""

    seq_len: int
    """Window length: tokens of context per window, and the targets a non-overlapping window scores."""
    stride: int
    """Targets between window starts: seq_len for non-overlapping windows, less to slide."""
    batch_windows: int = 8
    """Windows (document modes: document rows) per scoring forward."""
    device: torch.device | str = "cpu"
    """Where the model runs and the scored tokens are moved to."""
    rank: int = 0
    """This process's rank among ``world_size``: it scores its own share of the windows."""
    world_size: int = 1
    """Processes sharing the windows (1: this one scores them all)."""
    autocast_dtype: torch.dtype | None = None
    """Autocast precision of the forward (None: off, the weights' own precision)."""
    compile_backend: str | None = None
    """torch.compile backend of the scoring and test-time training forwards (None: eager)."""
