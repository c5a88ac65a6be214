"""Training batches from the train shards: contiguous spans (the baseline) or shuffled windows.

What a loader reads. A loader opens exactly the shard paths its caller passes, through
``read_shard`` (a validated memory map), and no other file. The train stage passes the train shards
only (``train_shard_paths``), so no loader can ever see a val token; tests spy on ``read_shard`` to
keep it that way.

Contiguous (``ContiguousLoader``, the challenge baseline). One stream walks the shards in order and
wraps around at the end. Each ``next_batch`` call takes a span of world * (local + 1) tokens and rank
r keeps the r-th slice; inputs and targets are that slice shifted by one. State: the stream position
(shard index, token offset).

Shuffled (``ShuffledLoader``). A global step is B = batch_tokens / seq_len windows of seq_len + 1
tokens. Under gradient accumulation ``next_batch`` is called grad_accum times per optimizer step on
each of the world ranks, each time for local = batch_tokens / (world * grad_accum) tokens. If each
call drew its own windows, what a step trains on would depend on how the batch is split. So the
first call of a step draws the (shard, start) pairs of all B windows at once, from
``numpy.random.default_rng([seed, step])``, and the calls hand them out in order: rank r owns the
r-th of world equal slices, and its a-th call of the step gets the a-th micro-batch of that slice.
Only this micro-batch's tokens are read; the other ranks' windows cost two integers each. Hence:

- the batches are a pure function of (seed, step, rank) for a given split of the batch;
- the union over ranks and micro-batches of a step's windows is the same B windows, in the same
  order, for any world size and accumulation that divide B (1, 2, 4, 8 GPUs give the same run).

Shards are picked in proportion to their token counts (a shard shorter than one window is never
picked) and starts are uniform over the positions where a whole window fits, so a window never
straddles two shards. State: the step counter and how many windows of the step this rank has used;
since a step's windows can always be drawn again, a resume continues with the same batches, even
from inside a step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.shards import read_shard
from ..errors import GolfError

LOADER_MODES = ("contiguous", "shuffled")


class TokenStream:
    """Endless stream over shards in order, wrapping around at the end; opens a shard when reached."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise GolfError("no train shards")
        self.paths = list(paths)
        self._open(0)

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` tokens, crossing shard boundaries (and the wrap) as needed."""
        parts, empty_opens = [], 0
        while count > 0:
            available = len(self.tokens) - self.pos
            if available <= 0:
                # Every shard opened once in a row without a token: they are all empty.
                if empty_opens > len(self.paths):
                    raise GolfError("every train shard is empty")
                self._open((self.shard + 1) % len(self.paths))
                empty_opens += 1
                continue
            n = min(available, count)
            parts.append(np.asarray(self.tokens[self.pos : self.pos + n]))
            self.pos += n
            count -= n
            empty_opens = 0
        return np.concatenate(parts)

    def _open(self, shard: int) -> None:
        self.shard, self.pos = shard, 0
        self.tokens = read_shard(self.paths[shard])

    def state_dict(self) -> dict:
        return {"shard": self.shard, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        shard, pos = _field(state, "shard"), _field(state, "pos")
        if not 0 <= shard < len(self.paths):
            raise GolfError(f"loader state names shard {shard}, but only {len(self.paths)} train shards are given")
        self._open(shard)
        if not 0 <= pos <= len(self.tokens):
            raise GolfError(f"loader state position {pos} is outside shard {shard} ({len(self.tokens)} tokens)")
        self.pos = pos


class ContiguousLoader:
    """The baseline: consecutive spans of the stream, one slice per rank."""

    def __init__(self, paths: list[Path], rank: int = 0, world_size: int = 1):
        _check_split(rank, world_size, 1)
        self.stream = TokenStream(paths)
        self.rank, self.world_size = rank, world_size

    def next_batch(self, local_tokens: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of shape (local_tokens / seq_len, seq_len), y being x shifted by one token."""
        _rows(local_tokens, seq_len)
        span = local_tokens + 1  # one extra token: the target of the last input
        chunk = self.stream.take(span * self.world_size)[self.rank * span : (self.rank + 1) * span]
        return _to_device(chunk[:-1].reshape(-1, seq_len), chunk[1:].reshape(-1, seq_len), device)

    def state_dict(self) -> dict:
        return {"kind": "contiguous", **self.stream.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "contiguous")
        self.stream.load_state_dict(state)


class ShuffledLoader:
    """Random windows, all of a global step drawn at once and handed out rank-major (see module doc)."""

    def __init__(self, paths: list[Path], rank: int = 0, world_size: int = 1, seed: int = 0,
                 grad_accum: int = 1):
        if not paths:
            raise GolfError("no train shards")
        _check_split(rank, world_size, grad_accum)
        if seed < 0:
            raise GolfError(f"loader seed must be >= 0 (numpy seeds), got {seed}")
        self.shards = [read_shard(p) for p in paths]
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.rank, self.world_size, self.seed, self.grad_accum = rank, world_size, seed, grad_accum
        self.step = 0
        self.cursor = 0  # windows of the current step already handed to this rank
        self._plan: tuple[np.ndarray, np.ndarray] | None = None  # the current step's (shards, starts)

    def draw_step(self, step: int, windows: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard index and start of every window of global step ``step``: a function of (seed, step) only."""
        weights = np.where(self.lengths > seq_len, self.lengths, 0).astype(np.float64)
        if not weights.any():
            raise GolfError(f"every train shard is shorter than one window of {seq_len + 1} tokens")
        rng = np.random.default_rng([self.seed, step])
        shard_ids = rng.choice(len(self.shards), size=windows, p=weights / weights.sum())
        # Exclusive high: start + seq_len + 1 <= length, so the window ends inside its shard.
        starts = rng.integers(0, self.lengths[shard_ids] - seq_len)
        return shard_ids, starts

    def next_batch(self, local_tokens: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next micro-batch; the step advances once its slice of the step is used up."""
        per_micro = _rows(local_tokens, seq_len)
        per_rank = per_micro * self.grad_accum
        global_windows = per_rank * self.world_size
        if self._plan is None:
            self._plan = self.draw_step(self.step, global_windows, seq_len)
        elif len(self._plan[0]) != global_windows:
            raise GolfError("micro-batch size changed inside a step: every call of a step must ask for the same tokens")
        first = self.rank * per_rank + self.cursor
        rows = self._gather(slice(first, first + per_micro), seq_len)
        self.cursor += per_micro
        if self.cursor == per_rank:
            self.step, self.cursor, self._plan = self.step + 1, 0, None
        return _to_device(rows[:, :-1], rows[:, 1:], device)

    def _gather(self, which: slice, seq_len: int) -> np.ndarray:
        """The tokens of the planned windows ``which``, one row of seq_len + 1 each."""
        shard_ids, starts = self._plan[0][which], self._plan[1][which]
        return np.stack([self.shards[i][s : s + seq_len + 1] for i, s in zip(shard_ids, starts)])

    def state_dict(self) -> dict:
        # The split is saved because ``cursor`` counts windows of this rank's slice: it only means
        # the same thing under the same world size and accumulation.
        return {"kind": "shuffled", "seed": self.seed, "step": self.step, "cursor": self.cursor,
                "world_size": self.world_size, "grad_accum": self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "shuffled")
        if _field(state, "seed") != self.seed:
            raise GolfError(f"loader state was drawn with seed {state['seed']}, this run uses {self.seed}: "
                            "the resumed batches would differ")
        step, cursor = _field(state, "step"), _field(state, "cursor")
        split = (_field(state, "world_size"), _field(state, "grad_accum"))
        if cursor and split != (self.world_size, self.grad_accum):
            raise GolfError(f"loader state is inside a step of a {split[0]}-rank, {split[1]}-micro-batch split; "
                            "resume with the same split, or from a checkpoint between steps")
        # Between steps any split resumes the same global batches: they depend on (seed, step) only.
        self.step, self.cursor, self._plan = step, cursor, None


def make_loader(mode: str, paths: list[Path], rank: int = 0, world_size: int = 1, seed: int = 0,
                grad_accum: int = 1):
    """The loader named by ``mode`` over ``paths`` (train shards only: nothing else is opened)."""
    if mode == "contiguous":
        return ContiguousLoader(paths, rank, world_size)
    if mode == "shuffled":
        return ShuffledLoader(paths, rank, world_size, seed, grad_accum)
    raise GolfError(f"unknown loader {mode!r}; choose one of {', '.join(LOADER_MODES)}")


def _rows(local_tokens: int, seq_len: int) -> int:
    """Sequences per micro-batch; the tokens must fill whole sequences."""
    if seq_len < 1 or local_tokens < seq_len or local_tokens % seq_len:
        raise GolfError(f"a micro-batch of {local_tokens} tokens is not a whole number of {seq_len}-token sequences")
    return local_tokens // seq_len


def _check_split(rank: int, world_size: int, grad_accum: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size or grad_accum < 1:
        raise GolfError(f"bad loader split: rank {rank}, world size {world_size}, grad_accum {grad_accum}")


def _check_kind(state: dict, kind: str) -> None:
    if state.get("kind") != kind:
        raise GolfError(f"loader state is for a {state.get('kind')!r} loader, this run uses {kind!r}")


def _field(state: dict, key: str) -> int:
    if key not in state:
        raise GolfError(f"loader state has no {key!r}: saved by an older golf? (keys: {sorted(state)})")
    return int(state[key])


def _to_device(x: np.ndarray, y: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous int64 tensors on ``device`` (ids are uint16 on disk; embeddings index with int64)."""
    def move(tokens: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(device, non_blocking=True)

    return move(x), move(y)
