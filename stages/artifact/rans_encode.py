"""Encoding the 'rans' section codec (its decoder, and the payload layout, are ``rans.py``'s):
static frequency tables and interleaved range ANS, in numpy. Runs in `golf pack` only: it does
not ship (the runtime imports ``rans.py``, never this module)."""

from __future__ import annotations

import math

import numpy as np

from .rans import HEAD, PRECISION, SEGMENT, STATE_LOW, WORD_BITS, Tables, segment_of_step, symbols_of

# Lanes ~ sqrt(total) / LANE_DIVISOR: each lane costs 8 bytes of final state, each step one round
# of array operations; on the 36M codes of the `top` model that is ~3 KB and a few seconds to decode.
LANE_DIVISOR = 16
MAX_LANES = 4096


def lane_count(total: int) -> int:
    return max(1, min(MAX_LANES, round(math.sqrt(total) / LANE_DIVISOR)))


def quantized_frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts scaled to sum to 2^PRECISION, every seen symbol keeping at least 1.

    The rounding error goes to (or comes from) the most frequent symbols, whose cost per unit of
    frequency is the smallest.
    """
    total = 1 << PRECISION
    seen = counts > 0
    freq = np.where(seen, np.maximum(1, np.round(counts * total / counts.sum())), 0).astype(np.int64)
    order = np.argsort(-counts, kind="stable")[: int(seen.sum())]
    position = 0
    while freq.sum() != total:
        symbol = order[position % order.size]
        step = 1 if freq.sum() < total else -1
        if freq[symbol] + step >= 1:
            freq[symbol] += step
        position += 1
    return freq


def rans_compress(data: bytes, segments: list[int] | None = None) -> bytes:
    """``data`` as a 'rans' payload, one frequency table per segment (``segments``: their byte
    lengths, summing to len(data); None: one segment). Empty segments are dropped."""
    segments = [len(data)] if segments is None else segments
    if sum(segments) != len(data):
        raise ValueError(f"segments cover {sum(segments)} bytes of {len(data)}")
    symbols = symbols_of(data)
    counts = [count for count in segments if count]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    tables, firsts = [], []
    for start, count in zip(starts, counts):
        part = symbols[start : start + count]
        first = int(part.min())
        tables.append(quantized_frequencies(np.bincount(part - first)))
        firsts.append(first)
    lanes = lane_count(len(data)) if counts else 0
    head = [HEAD.pack(lanes, len(counts))]
    for count, first, table in zip(counts, firsts, tables):
        head += [SEGMENT.pack(count, first, first + table.size - 1), table.astype("<u2").tobytes()]
    if not counts:
        return b"".join(head)
    state, words = _encode(symbols, Tables(tables, firsts), starts, lanes)
    return b"".join([*head, state.astype("<u8").tobytes(), words.astype("<u4").tobytes()])


def _encode(symbols: np.ndarray, tables: Tables, starts: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(final state of every lane, the words in the order the decoder reads them).

    Range ANS is last in, first out: the encoder runs the steps backwards, and the decoder reads
    step 0's refill words first. The padding after the last symbol repeats the last segment's most
    frequent symbol.
    """
    steps = -(-symbols.size // lanes)
    last = len(starts) - 1
    padded = np.full(steps * lanes, int(np.argmax(tables.freq[last])) + int(tables.first[last]), dtype=np.int64)
    padded[: symbols.size] = symbols
    grid = padded.reshape(steps, lanes)
    shift, precision, word_bits = np.uint64(63 - PRECISION), np.uint64(PRECISION), np.uint64(WORD_BITS)
    word_mask = np.uint64((1 << WORD_BITS) - 1)
    x = np.full(lanes, STATE_LOW, dtype=np.uint64)
    emitted: list[np.ndarray] = [np.zeros(0, np.uint64)] * steps
    for step in range(steps - 1, -1, -1):
        segment = segment_of_step(starts, lanes, step)
        symbol = grid[step] - tables.first[segment]
        f = tables.freq[segment, symbol]
        high = x >= (f << shift)  # renormalize so that x stays below 2^63 after coding this symbol
        emitted[step] = x[high] & word_mask
        x[high] >>= word_bits
        x = ((x // f) << precision) + x % f + tables.cum[segment, symbol]
    return x, np.concatenate(emitted)
