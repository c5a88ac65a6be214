"""Training batches from the train shards: contiguous spans (the baseline) or shuffled windows.

Only the paths the caller passes are ever opened, and the caller passes train shards only, so a
loader cannot read val tokens.

Contiguous: each step takes one span of world * (local + 1) tokens in shard order; rank r gets
the r-th slice, inputs and targets shifted by one. Shuffled: each optimizer step draws all its
windows of seq_len + 1 tokens at once, from a generator seeded by (seed, step), at random starts
inside random shards (weighted by size; windows never straddle shards); micro-batches then hand
them out in order, rank-major. The set of windows of a step is therefore the same for any world
size and gradient-accumulation split of the same global batch.

Both loaders have ``state_dict``/``load_state_dict`` so a resumed run sees the same batches.
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
                self._open((self.shard + 1) % len(self.paths))
                continue
            n = min(available, count)
            parts.append(np.asarray(self.tokens[self.pos : self.pos + n]))
            self.pos += n
            count -= n
        return np.concatenate(parts)

    def _open(self, shard: int) -> None:
        self.shard, self.pos = shard, 0
        self.tokens = read_shard(self.paths[shard])

    def state_dict(self) -> dict:
        return {"shard": self.shard, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self._open(int(state["shard"]))
        self.pos = int(state["pos"])


def _as_batch(chunks: np.ndarray, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.as_tensor(chunks.astype(np.int64)).view(-1, seq_len + 1)
    return rows[:, :-1].to(device, non_blocking=True), rows[:, 1:].to(device, non_blocking=True)


class ContiguousLoader:
    def __init__(self, paths: list[Path], rank: int = 0, world_size: int = 1):
        self.stream = TokenStream(paths)
        self.rank, self.world_size = rank, world_size

    def next_batch(self, local_tokens: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)[self.rank * span : (self.rank + 1) * span]
        x, y = torch.as_tensor(chunk.astype(np.int64))[:-1], torch.as_tensor(chunk.astype(np.int64))[1:]
        return x.view(-1, seq_len).to(device, non_blocking=True), y.view(-1, seq_len).to(device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"kind": "contiguous", **self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


class ShuffledLoader:
    def __init__(self, paths: list[Path], rank: int = 0, world_size: int = 1, seed: int = 0, grad_accum: int = 1):
        if not paths:
            raise GolfError("no train shards")
        self.shards = [read_shard(p) for p in paths]
        self.rank, self.world_size, self.seed, self.grad_accum = rank, world_size, seed, grad_accum
        self.step = 0
        self.cursor = 0  # windows of the current step already handed to this rank
        self._windows: np.ndarray | None = None

    def _step_windows(self, count: int, seq_len: int) -> np.ndarray:
        """All (count, seq_len + 1) windows of the current global step."""
        rng = np.random.default_rng([self.seed, self.step])
        sizes = np.array([len(s) - seq_len - 1 for s in self.shards])
        if (sizes < 0).all():
            raise GolfError(f"train shards are shorter than one window of {seq_len + 1} tokens")
        weights = np.clip(sizes, 0, None) / np.clip(sizes, 0, None).sum()
        shard_ids = rng.choice(len(self.shards), size=count, p=weights)
        starts = rng.integers(0, sizes[shard_ids] + 1)
        return np.stack([np.asarray(self.shards[i][s : s + seq_len + 1]) for i, s in zip(shard_ids, starts)])

    def next_batch(self, local_tokens: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch of this rank; a new step begins once its windows are used up."""
        per_micro = local_tokens // seq_len
        if self._windows is None:  # every micro-batch of a step has the same size (the trainer's contract)
            self._windows = self._step_windows(per_micro * self.world_size * self.grad_accum, seq_len)
        per_rank = len(self._windows) // self.world_size
        mine = self._windows[self.rank * per_rank : (self.rank + 1) * per_rank]
        chunk = mine[self.cursor : self.cursor + per_micro]
        self.cursor += per_micro
        if self.cursor >= per_rank:
            self.step, self.cursor, self._windows = self.step + 1, 0, None
        return _as_batch(chunk.reshape(-1), seq_len, device)

    def state_dict(self) -> dict:
        return {"kind": "shuffled", "step": self.step, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.cursor, self._windows = int(state["step"]), int(state["cursor"]), None
        if self.cursor:
            raise GolfError("resume inside a step is not supported: save loader state between steps")


def make_loader(mode: str, paths: list[Path], rank: int, world_size: int, seed: int, grad_accum: int = 1):
    if mode == "contiguous":
        return ContiguousLoader(paths, rank, world_size)
    if mode == "shuffled":
        return ShuffledLoader(paths, rank, world_size, seed, grad_accum)
    raise GolfError(f"unknown loader {mode!r}; choose contiguous or shuffled")
