"""The TTT settings: which mode, and the chunk-SGD hyperparameters at the records' values.

Defaults are those of records #1413/#1477/#1493 (docs/TTT_CASEOPS.md section B.1). Ships inside
the artifact (stdlib and ``ranges`` only), so the shipped code checks the config it runs with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ...ranges import ConfigError, check_ranges, ranged

TTTMode = Literal["none", "chunk-sgd"]


@dataclass(frozen=True)
class TTTConfig:
    """Test-time training during eval (score first, then adapt on the scored tokens)."""

    mode: TTTMode = "none"
    """'none' (plain scoring) or 'chunk-sgd' (score a chunk, then SGD on it; records #1413/#1477/#1493)."""
    chunk_tokens: int = ranged(32768, ge=1)
    """Targets per chunk: each chunk is scored, then (unless last) trained on."""
    lr: float = ranged(0.005, ge=0)
    """Peak SGD learning rate, cosine-decayed over chunks to 0 at the last one (0: no learning)."""
    momentum: float = ranged(0.9, ge=0, lt=1)
    """SGD momentum; the buffer carries over from chunk to chunk (one optimizer for the whole eval)."""
    epochs: int = ranged(3, ge=0)
    """Passes over each scored chunk (0: no learning)."""
    batch_seqs: int = ranged(32, ge=1)
    """Training sequences (of the eval window length) per optimizer step."""
    grad_clip: float = ranged(1.0, gt=0, off=0)
    """Clip the gradient norm over all trained parameters to this (0: no clipping)."""
    freeze_blocks: int = ranged(0, ge=0)
    """Leave the first this many blocks untrained (0: train every weight, as the records do)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.mode not in get_args(TTTMode):
            raise ConfigError("mode", f"must be one of {', '.join(get_args(TTTMode))}, got {self.mode!r}")
