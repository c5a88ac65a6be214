"""Score a model on (a prefix of) the val split with progress; used by train, quantize and eval."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..progress import Reporter
from . import scorer
from .bpb import BpbSums
from .setup import ScoringSetup
from .val_data import ValData
from .windows import count_windows


def validate(model: torch.nn.Module, val: ValData, setup: ScoringSetup, max_tokens: int = 0,
             reporter: Reporter | None = None, label: str = "validate",
             score_stream=scorer.score_stream) -> BpbSums:
    """The sums over every rank of scoring ``val`` (a prefix of ``max_tokens`` targets if > 0) as
    ``setup`` says (``scoring_setup``: this process's), with progress under ``label``.

    ``score_stream`` defaults to this package's; `golf eval` passes the one shipped inside the
    artifact (or the shipped test-time training's, which takes the same arguments) so that the
    counted code is the code that scores.
    """
    reporter = reporter or Reporter()
    tokens = scored_prefix(val.tokens, max_tokens)
    sidecar = None if val.sidecar is None else val.sidecar[: len(tokens)]
    windows = count_windows(len(tokens), setup.seq_len, setup.stride) // setup.world_size
    with reporter.progress(label, windows) as advance:
        sums = score_stream(model, tokens, val.table, setup, sidecar, on_windows=advance)
    return sums.all_reduce(setup.device)


def scoring_setup(seq_len: int, stride: int, batch_windows: int, device: torch.device | str,
                  compile_backend: str | None = None) -> ScoringSetup:
    """This process's setup: its rank and the number of processes from torch.distributed, and the
    scoring precision of ``device`` (``autocast_dtype``); ``compile_backend`` None scores eagerly."""
    device = torch.device(device)
    rank, world = rank_and_world()
    return ScoringSetup(seq_len, stride, batch_windows, device, rank, world, autocast_dtype(device), compile_backend)


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """Scoring precision: bf16 autocast on CUDA (as the records), plain fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def scored_prefix(tokens, max_tokens: int = 0):
    """The stream ``validate`` scores: the first ``max_tokens`` targets and the token before them, or all."""
    return tokens[: max_tokens + 1] if max_tokens else tokens
