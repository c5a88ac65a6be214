"""Score a model on (a prefix of) the val split with progress; used by train, quantize and eval."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..progress import Reporter
from . import stream
from .bpb import BpbSums
from .val_data import ValData


def validate(
    model: torch.nn.Module,
    val: ValData,
    seq_len: int,
    stride: int | None = None,
    batch_windows: int = 8,
    device: torch.device | str = "cpu",
    max_tokens: int = 0,
    reporter: Reporter | None = None,
    label: str = "validate",
    score_stream=stream.score_stream,
    count_windows=stream.count_windows,
) -> BpbSums:
    """Non-overlapping windows unless ``stride`` is given. ``max_tokens`` > 0 scores a prefix only.

    ``score_stream`` and ``count_windows`` default to this package's; `golf eval` passes the
    ones shipped inside the artifact so that the counted code is the code that scores.
    """
    reporter = reporter or Reporter()
    stride = stride or seq_len
    tokens = scored_prefix(val.tokens, max_tokens)
    sidecar = None if val.sidecar is None else val.sidecar[: len(tokens)]
    device = torch.device(device)
    autocast = autocast_dtype(device)
    rank, world = rank_and_world()
    with reporter.progress(label, count_windows(len(tokens), seq_len, stride) // world) as advance:
        sums = score_stream(
            model, tokens, val.table, seq_len, stride, batch_windows, device,
            sidecar=sidecar, rank=rank, world_size=world, autocast_dtype=autocast, on_windows=advance,
        )
    return sums.all_reduce(device)


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
