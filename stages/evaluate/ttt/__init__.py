"""Score-first test-time training (TTT): adapt the model on val tokens it has already scored.

Every mode scores the val stream chunk by chunk with the plain scorer (``scoring.WindowScorer``,
the model's own forward under no_grad) and only then adapts on that chunk, so a target's NLL is
committed before any update that used it, every target is scored exactly once, and nothing is
rescored. One module per mode; ``common.py`` holds what they share. Ships inside the artifact:
the code that adapts is the code that is counted.
"""

from __future__ import annotations

from .chunk_sgd import score_with_chunk_sgd
from .config import TTTConfig

# mode -> its scorer; each takes score_stream's arguments plus ``config``, ``receipts`` and ``phase``.
MODES = {"chunk-sgd": score_with_chunk_sgd}


def score_with_ttt(*args, config: dict, **kwargs):
    """Score with the mode ``config['mode']`` names; ``config`` is a TTTConfig as a dict, rebuilt
    (and range-checked) by the shipped TTTConfig."""
    ttt = TTTConfig(**config)
    return MODES[ttt.mode](*args, config=ttt, **kwargs)
