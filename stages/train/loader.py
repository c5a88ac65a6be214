"""Training batches from the train shards, read in order (the baseline's contiguous loader).

Only train shards are ever opened here: the caller passes train shard paths, and val shards are
never among them. Each step takes one contiguous span of world * (local + 1) tokens; rank r
gets the r-th slice, so inputs and targets are that slice shifted by one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.shards import read_shard
from ..errors import GolfError


class TokenStream:
    """Endless stream over shards in order, wrapping around at the end."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise GolfError("no train shards")
        self.paths = list(paths)
        self.shard = 0
        self.pos = 0
        self.tokens = read_shard(self.paths[0])

    def take(self, count: int) -> np.ndarray:
        parts = []
        while count > 0:
            available = len(self.tokens) - self.pos
            if available <= 0:
                self.shard = (self.shard + 1) % len(self.paths)
                self.tokens, self.pos = read_shard(self.paths[self.shard]), 0
                continue
            n = min(available, count)
            parts.append(np.asarray(self.tokens[self.pos : self.pos + n]))
            self.pos += n
            count -= n
        return np.concatenate(parts)


class ContiguousLoader:
    def __init__(self, paths: list[Path], rank: int = 0, world_size: int = 1):
        self.stream = TokenStream(paths)
        self.rank, self.world_size = rank, world_size

    def next_batch(self, local_tokens: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)[self.rank * span : (self.rank + 1) * span]
        chunk = torch.as_tensor(chunk.astype(np.int64))
        x = chunk[:-1].view(-1, seq_len)
        y = chunk[1:].view(-1, seq_len)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
