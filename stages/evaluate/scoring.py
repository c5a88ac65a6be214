"""Scoring a model on the val stream: non-overlapping or sliding windows, exact bits per byte.

The val stream is truncated to whole windows of ``seq_len`` targets, as the challenge does.
Non-overlapping (stride == seq_len): every window scores all its positions. Sliding: the first
window scores all its positions, each later one only its last ``stride``, so every target is
scored exactly once with at least ``seq_len - stride`` tokens of context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .bpb import BpbSums, ByteTable, TorchByteTable


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


@torch.no_grad()
def score_stream(
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
) -> BpbSums:
    """Sum NLL and bytes over this rank's share of the windows (all-reduce the result for the total).

    ``sidecar`` (one byte count per token, from the original text) replaces the table when given.
    """
    num_targets = usable_targets(len(tokens), seq_len)
    windows = plan_windows(num_targets, seq_len, stride)[rank::world_size]
    stream = torch.as_tensor(np.asarray(tokens[: num_targets + 1], dtype=np.int64))
    side = None if sidecar is None else torch.as_tensor(np.asarray(sidecar[: num_targets + 1], dtype=np.int64))
    byte_table = TorchByteTable(table, device)
    offsets = torch.arange(seq_len + 1)
    sums = BpbSums()
    was_training = model.training
    model.eval()
    for first in range(0, len(windows), batch_windows):
        batch = windows[first : first + batch_windows]
        index = torch.tensor([w.start for w in batch])[:, None] + offsets
        chunk = stream[index].to(device)
        inputs, targets = chunk[:, :-1], chunk[:, 1:]
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(inputs)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        scored = torch.arange(seq_len, device=device)[None, :] >= torch.tensor(
            [w.score_from for w in batch], device=device
        )[:, None]
        if side is None:
            target_bytes = byte_table.target_bytes(inputs, targets)
        else:
            target_bytes = side[index[:, 1:]].to(device)
        sums.add(
            nll.double()[scored].sum().item(),
            target_bytes[scored].sum().item(),
            int(scored.sum().item()),
        )
        if on_windows is not None:
            on_windows(len(batch))
    model.train(was_training)
    return sums


def count_windows(num_tokens: int, seq_len: int, stride: int) -> int:
    return len(plan_windows(usable_targets(num_tokens, seq_len), seq_len, stride))
