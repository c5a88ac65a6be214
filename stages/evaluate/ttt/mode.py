"""What a TTT mode declares, and the one registry of modes that the shipped entry points, the eval
stage and `golf eval --ttt` read.

Each mode module ends with ``register(TTTMode(...))``; ``ttt/__init__.py`` imports every mode
module, which both registers it and puts it in the artifact (the bundle follows relative imports).
Adding a mode: its module (code and declaration), its import there, its name (and settings section,
if it has settings) in ``config.py``, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

from ...ranges import ConfigError

if TYPE_CHECKING:
    import torch

    from ...scoring.bpb import BpbSums
    from .batch_fit import BatchFit
    from .common import TTTPass
    from .config import TTTConfig


@dataclass(frozen=True)
class TTTMode:
    """A test-time training mode, as the eval stage and the CLI need to know it."""

    name: str
    """Its ``ttt.mode`` value."""
    help: str
    """Its sentences in `golf eval --ttt`'s help: what it does and with which settings (--set keys)."""
    score: Callable[[torch.nn.Module, TTTPass, TTTConfig], BpbSums] | None = None
    """Scores this rank's share of the val stream, adapting score-first (the caller all-reduces the sums);
    None: no adaptation, the runtime's plain scoring (no TTT code is loaded)."""
    warm_up: Callable[[torch.nn.Module, TTTPass, TTTConfig], None] | None = None
    """Before the timed loop, at the pass's shapes, on the random tokens of its pass: the weights unchanged."""
    scores_documents: bool = False
    """Scores each document in windows of its own (chunk by chunk; the stride plays no part), not the
    stream's sliding or non-overlapping windows."""
    without_adaptation: Callable[[TTTConfig], TTTConfig] | None = None
    """The --compare-no-ttt pass: the config that scores the mode's own windows without learning; None:
    the runtime's plain scoring of the stream's windows (the same windows, for a stream mode)."""
    fit_batch: Callable[..., BatchFit] | None = None
    """Document modes: ``fit_batch(model, config, seq_len, device, autocast_dtype)``, the documents per
    batch that fit the device (batch_fit.py); None: its batches do not depend on the device."""
    with_batch_docs: Callable[[TTTConfig, int], TTTConfig] | None = None
    """The config that runs with the documents per batch ``fit_batch`` chose."""
    memory_keys: tuple[str, ...] = ()
    """Its settings (under ``ttt.``) that size its memory beside the model, named when memory runs out;
    none: the eval's batch_windows does."""
    notes: Mapping[str, str] = field(default_factory=dict)
    """Ledger buckets of its own (beside the stage's warmup, score and adapt) -> why each counts toward
    the eval budget; a bucket whose name begins with a key (global_sgd_2) takes that key's note."""

    @property
    def adapts(self) -> bool:
        """Whether it trains on scored targets (else it is plain scoring)."""
        return self.score is not None


# name -> mode, in the order the modules register (ttt/__init__.py's imports): the help lists them so.
REGISTRY: dict[str, TTTMode] = {}


def register(mode: TTTMode) -> TTTMode:
    """Add ``mode`` to the registry; each mode module calls it once, when imported."""
    if mode.name in REGISTRY:
        raise ValueError(f"TTT mode {mode.name!r} is registered twice")
    REGISTRY[mode.name] = mode
    return mode


def mode_named(name: str, adapting: bool = False) -> TTTMode:
    """The registered mode ``name`` (``adapting``: one that adapts); a mode the config names but this
    code does not hold is one line."""
    held = [mode.name for mode in REGISTRY.values() if mode.adapts or not adapting]
    if name not in held:
        raise ConfigError("ttt.mode", f"{name!r} is not built into this code (built: {', '.join(held)})")
    return REGISTRY[name]
