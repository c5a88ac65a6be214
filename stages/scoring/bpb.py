"""Bits per byte, exactly as the challenge scores it. Every stage that reports bpb uses this module.

Per-token byte table over the vocabulary:
- control, unknown and unused pieces count 0 bytes and are "boundary" pieces;
- byte-fallback pieces ``<0xNN>`` count 1 byte;
- every other piece counts the UTF-8 length of its text after removing one leading ``▁``,
  and is flagged "leading space" if it had one.

The bytes of target t are ``base[t] + (leading_space[t] and not boundary[prev])``: the space a
piece carries is a real byte of text except right after BOS. Every target's NLL counts, BOS
targets too (they add 0 bytes), and ``bpb = sum(nll) / (ln 2 * sum(bytes))`` from float64 sums
over all ranks, never a mean of per-rank bpb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SPACE_MARK = "\u2581"  # '▁', SentencePiece's visible space


@dataclass
class ByteTable:
    """Per-token byte facts, indexed by token id."""

    base: np.ndarray
    """Bytes of each piece's text without its leading '▁' (int32)."""
    leading_space: np.ndarray
    """True where the piece starts with '▁' (one space byte, unless it follows a boundary)."""
    boundary: np.ndarray
    """True for control/unknown/unused pieces: they hold no text and swallow a following space."""

    @property
    def vocab_size(self) -> int:
        return int(self.base.shape[0])


def build_byte_table(sp, vocab_size: int | None = None) -> ByteTable:
    """Byte table of a SentencePieceProcessor, padded to ``vocab_size`` (extra ids: 0-byte boundaries)."""
    size = max(sp.vocab_size(), vocab_size or 0)
    base = np.zeros(size, dtype=np.int32)
    leading_space = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    for token in range(sp.vocab_size()):
        if sp.is_control(token) or sp.is_unknown(token) or sp.is_unused(token):
            continue
        boundary[token] = False
        if sp.is_byte(token):
            base[token] = 1
            continue
        piece = sp.id_to_piece(token)
        if piece.startswith(SPACE_MARK):
            leading_space[token] = True
            piece = piece[1:]
        base[token] = len(piece.encode("utf-8"))
    return ByteTable(base, leading_space, boundary)


def space_piece_id(sp) -> int | None:
    """Id of the standalone '▁' piece, or None. Without it a lone space becomes three byte
    tokens (the UTF-8 of '▁') and bpb comes out ~20% too low (PR #897)."""
    token = sp.piece_to_id(SPACE_MARK)
    if token == sp.unk_id() or sp.id_to_piece(token) != SPACE_MARK:
        return None
    return token


def token_bytes(table: ByteTable, tokens: np.ndarray) -> np.ndarray:
    """Bytes the table assigns to each token of a stream (int64); the first follows a boundary."""
    tokens = np.asarray(tokens, dtype=np.int64)
    follows_text = np.concatenate([[False], ~table.boundary[tokens[:-1]]]) if tokens.size else np.zeros(0, dtype=bool)
    return table.base[tokens].astype(np.int64) + (table.leading_space[tokens] & follows_text)


def stream_bytes(table: ByteTable, tokens: np.ndarray) -> int:
    """Bytes the table assigns to a whole token stream; the first token is taken to follow a boundary."""
    return int(token_bytes(table, tokens).sum())


class TorchByteTable:
    """The byte table as tensors on a device, for scoring inside the eval loop."""

    def __init__(self, table: ByteTable, device: torch.device | str = "cpu"):
        self.base = torch.as_tensor(table.base, dtype=torch.int64, device=device)
        self.leading_space = torch.as_tensor(table.leading_space, device=device)
        self.boundary = torch.as_tensor(table.boundary, device=device)

    def target_bytes(self, prev: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Bytes of each target given the token before it (same shapes, int64)."""
        space = self.leading_space[target] & ~self.boundary[prev]
        return self.base[target] + space.to(torch.int64)


@dataclass
class BpbSums:
    """Global sums that bpb is computed from. Add per batch, all-reduce once, divide once."""

    nll: float = 0.0
    """Sum of natural-log NLL over scored targets (float64)."""
    bytes: int = 0
    """Sum of target bytes."""
    tokens: int = 0
    """Number of scored targets."""

    def add(self, nll: float, num_bytes: int, tokens: int) -> None:
        self.nll += float(nll)
        self.bytes += int(num_bytes)
        self.tokens += int(tokens)

    def merge(self, other: "BpbSums") -> "BpbSums":
        return BpbSums(self.nll + other.nll, self.bytes + other.bytes, self.tokens + other.tokens)

    def all_reduce(self, device: torch.device | str = "cpu") -> "BpbSums":
        """Sum across ranks when torch.distributed is initialized (float64, so no precision loss)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        packed = torch.tensor([self.nll, float(self.bytes), float(self.tokens)], dtype=torch.float64, device=device)
        dist.all_reduce(packed)
        return BpbSums(float(packed[0]), int(round(float(packed[1]))), int(round(float(packed[2]))))

    @property
    def loss(self) -> float:
        """Mean NLL per target token, in nats."""
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def bpb(self) -> float:
        """Bits per byte."""
        return self.nll / (math.log(2) * self.bytes) if self.bytes else float("nan")
