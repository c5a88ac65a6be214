"""The windows a token stream is scored in: non-overlapping or sliding, every target exactly once.

The val stream is truncated to whole windows of ``seq_len`` targets, as the challenge does.
Non-overlapping (stride == seq_len): every window scores all its positions. Sliding: the first
window scores all its positions, each later one only its last ``stride``, so every target is
scored exactly once with at least ``seq_len - stride`` tokens of context.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Inputs are tokens[start : start + seq_len]; positions >= score_from are scored."""

    start: int
    """Stream index of the window's first input token."""
    score_from: int
    """The first window position whose target is scored (0: all; sliding: seq_len - stride or more)."""


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


def count_windows(num_tokens: int, seq_len: int, stride: int) -> int:
    """The windows a stream of ``num_tokens`` tokens is scored in (progress totals)."""
    return len(plan_windows(usable_targets(num_tokens, seq_len), seq_len, stride))
