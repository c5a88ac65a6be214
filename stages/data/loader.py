"""Training batches from the train shards: contiguous spans (the baseline), shuffled windows, or
document-packed rows (the #1667 lineage).

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

Document-packed (``DocPackedLoader``, the batches of the #1667 lineage: pr1880, pr1790, top). The
records do not pad or reorder documents: they cut the stream into rows and let attention do the
document work. A row is R = pack_tokens input tokens (the records: their per-GPU micro-batch,
786,432 / 8 = 98,304) read as one sequence, with R + 1 tokens consumed so the last input has its
target. Attention restarts at the row start, at every BOS, and every seq_len tokens inside a
document (counted from its BOS, or from the row start for the document the row begins inside): the
records' cu_seqlens, computed here on the host from each micro-batch's rows (``find_segments``, as
``document_ids`` with ``max_doc_len`` cuts them; pinned and copied without a sync on CUDA) and
returned with the batch, so the model's forward never searches the tokens (``model.doc_mask`` must be
on). A row therefore usually begins and ends inside a document. A global
step is G = batch_tokens / R consecutive rows; when they do not all fit in what is left of the
current shard, the rest of the shard is skipped and the step starts at the first BOS of the next
shard (shards in order, wrapping around), as the records do with their 8 GPUs. Rank r owns the r-th
of world equal slices of the step's rows and its a-th call of the step gets the a-th micro-batch of
that slice, as for shuffled windows: the rows of a step are the same for any world size and
accumulation that divide G. State: the shard and position where the current step starts and how
many of its rows this rank has used.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import GolfError
from ..model.attention_backends import Segments, find_segments
from .shards import read_shard

LOADER_MODES = ("contiguous", "shuffled", "doc_packed")
# Shards are searched for their first BOS this many tokens at a time (they normally start with one).
BOS_SEARCH_CHUNK = 1 << 20


class Batch(NamedTuple):
    """One micro-batch on its device: inputs and targets (rows, row_tokens), and for doc-packed rows
    the document boundaries the forward takes (``GPT.forward(..., segments=)``)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    segments: Segments | None = None


class TokenStream:
    """Endless stream over shards in order, wrapping around at the end; opens a shard when reached."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise GolfError("no train shards")
        self.paths = list(paths)
        self.open_shard(0)

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` tokens, crossing shard boundaries (and the wrap) as needed."""
        parts, empty_opens = [], 0
        while count > 0:
            available = len(self.tokens) - self.pos
            if available <= 0:
                # Every shard opened once in a row without a token: they are all empty.
                if empty_opens > len(self.paths):
                    raise GolfError("every train shard is empty")
                self.open_shard((self.shard + 1) % len(self.paths))
                empty_opens += 1
                continue
            n = min(available, count)
            parts.append(np.asarray(self.tokens[self.pos : self.pos + n]))
            self.pos += n
            count -= n
            empty_opens = 0
        return np.concatenate(parts)

    def open_shard(self, shard: int) -> None:
        self.shard, self.pos = shard, 0
        self.tokens = read_shard(self.paths[shard])

    def state_dict(self) -> dict:
        return {"shard": self.shard, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        shard, pos = _field(state, "shard"), _field(state, "pos")
        if not 0 <= shard < len(self.paths):
            raise GolfError(f"loader state names shard {shard}, but only {len(self.paths)} train shards are given")
        self.open_shard(shard)
        if not 0 <= pos <= len(self.tokens):
            raise GolfError(f"loader state position {pos} is outside shard {shard} ({len(self.tokens)} tokens)")
        self.pos = pos


class ContiguousLoader:
    """The baseline: consecutive spans of the stream, one slice per rank."""

    def __init__(self, paths: list[Path], rank: int = 0, world_size: int = 1):
        _check_split(rank, world_size, 1)
        self.stream = TokenStream(paths)
        self.rank, self.world_size = rank, world_size

    def next_batch(self, local_tokens: int, seq_len: int, device) -> Batch:
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

    def next_batch(self, local_tokens: int, seq_len: int, device) -> Batch:
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


class DocPackedLoader:
    """Rows of pack_tokens cut from the stream, all of a global step in one shard (see module doc)."""

    def __init__(self, paths: list[Path], rank: int = 0, world_size: int = 1, grad_accum: int = 1,
                 bos_id: int = 1, max_doc_len: int = 0):
        """``max_doc_len``: attention also restarts every this many tokens inside a document (the
        train seq_len; 0: only at BOS and row starts)."""
        _check_split(rank, world_size, grad_accum)
        self.stream = TokenStream(paths)
        self.stream.pos = first_bos(self.stream.tokens, bos_id)
        self.rank, self.world_size, self.grad_accum, self.bos_id = rank, world_size, grad_accum, bos_id
        self.max_doc_len = max_doc_len
        self.cursor = 0  # rows of the current step already handed to this rank
        self._step: tuple[int, int] | None = None  # (rows, row tokens) of the step in progress

    def next_batch(self, local_tokens: int, row_tokens: int, device) -> Batch:
        """This rank's next micro-batch, (local_tokens / row_tokens, row_tokens) with its segments;
        the step advances once its slice of the step is used up."""
        per_micro = _rows(local_tokens, row_tokens)
        per_rank = per_micro * self.grad_accum
        step = (per_rank * self.world_size, row_tokens)
        span = row_tokens + 1  # one extra token per row: the target of its last input
        if self._step is None:
            self._place(step[0] * span)
            self._step = step
        elif self._step != step:
            raise GolfError("micro-batch size changed inside a step: every call of a step must ask for the same tokens")
        first = self.stream.pos + (self.rank * per_rank + self.cursor) * span
        rows = np.asarray(self.stream.tokens[first : first + per_micro * span]).reshape(per_micro, span)
        self.cursor += per_micro
        if self.cursor == per_rank:
            self.stream.pos += step[0] * span
            self.cursor, self._step = 0, None
        return packed_batch(rows, self.bos_id, self.max_doc_len, device)

    def _place(self, step_tokens: int) -> None:
        """Move to the first BOS of the next shard, and on, until the whole step fits."""
        stream = self.stream
        for _ in range(len(stream.paths) + 1):
            if stream.pos + step_tokens <= len(stream.tokens):
                return
            stream.open_shard((stream.shard + 1) % len(stream.paths))
            stream.pos = first_bos(stream.tokens, self.bos_id)
        raise GolfError(f"no train shard holds one step of doc-packed rows ({step_tokens} tokens): "
                        "lower train.batch_tokens or train.pack_tokens")

    def state_dict(self) -> dict:
        # Mid-step, ``cursor`` counts rows of this rank's slice of a step of that shape: it only means
        # the same thing under the same split and row length.
        rows, row_tokens = self._step or (0, 0)
        return {"kind": "doc_packed", **self.stream.state_dict(), "cursor": self.cursor,
                "world_size": self.world_size, "grad_accum": self.grad_accum,
                "step_rows": rows, "row_tokens": row_tokens}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "doc_packed")
        cursor = _field(state, "cursor")
        split = (_field(state, "world_size"), _field(state, "grad_accum"))
        step = (_field(state, "step_rows"), _field(state, "row_tokens"))
        if cursor and split != (self.world_size, self.grad_accum):
            raise GolfError(f"loader state is inside a step of a {split[0]}-rank, {split[1]}-micro-batch split; "
                            "resume with the same split, or from a checkpoint between steps")
        # Between steps any split resumes the same rows: they depend on the stream position only.
        self.stream.load_state_dict(state)
        self.cursor, self._step = cursor, (step if cursor else None)


def first_bos(tokens: np.ndarray, bos_id: int) -> int:
    """Position of the first BOS in ``tokens``; 0 if there is none (the records start there too)."""
    for start in range(0, len(tokens), BOS_SEARCH_CHUNK):
        hits = np.flatnonzero(np.asarray(tokens[start : start + BOS_SEARCH_CHUNK]) == bos_id)
        if hits.size:
            return start + int(hits[0])
    return 0


def make_loader(mode: str, paths: list[Path], rank: int = 0, world_size: int = 1, seed: int = 0,
                grad_accum: int = 1, bos_id: int = 1, max_doc_len: int = 0):
    """The loader named by ``mode`` over ``paths`` (train shards only: nothing else is opened).
    ``bos_id`` (the model's; 1 in the challenge's shards) is where doc-packed steps start in a shard
    and documents start in its rows; ``max_doc_len`` cuts those documents (doc-packed only)."""
    if mode == "contiguous":
        return ContiguousLoader(paths, rank, world_size)
    if mode == "shuffled":
        return ShuffledLoader(paths, rank, world_size, seed, grad_accum)
    if mode == "doc_packed":
        return DocPackedLoader(paths, rank, world_size, grad_accum, bos_id, max_doc_len)
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


def packed_batch(rows: np.ndarray, bos_id: int, max_doc_len: int, device) -> Batch:
    """Inputs, targets and segments of rows of row_tokens + 1 tokens; the segments are found on the
    host (no device sync) and travel like the tokens."""
    inputs, targets = _host(rows[:, :-1]), _host(rows[:, 1:])
    segments = find_segments(inputs, bos_id, max_doc_len)
    return Batch(_move(inputs, device), _move(targets, device),
                 Segments(_move(segments.cu_seqlens, device), segments.max_seqlen))


def _host(tokens: np.ndarray) -> torch.Tensor:
    """Contiguous int64 (ids are uint16 on disk; embeddings index with int64)."""
    return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))


def _move(tensor: torch.Tensor, device) -> torch.Tensor:
    """``tensor`` on ``device``; through pinned memory to CUDA so the copy does not block the host."""
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _to_device(x: np.ndarray, y: np.ndarray, device) -> Batch:
    return Batch(_move(_host(x), device), _move(_host(y), device))
