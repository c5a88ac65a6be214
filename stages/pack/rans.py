"""Encoding the 'rans' section codec (its decoder, and the payload layout, are
``stages/artifact/rans.py``'s): a static frequency table and interleaved range ANS, in numpy."""

from __future__ import annotations

import math

import numpy as np

from ..artifact.rans import HEAD, PRECISION, STATE_LOW, WORD_BITS, cumulative, symbols_of

# Lanes ~ sqrt(count) / LANE_DIVISOR: each lane costs 4 bytes of final state, each step one
# round of array operations when decoding; this keeps both near 0.05% and a few seconds on 36M codes.
LANE_DIVISOR = 8
MAX_LANES = 4096


def lane_count(count: int) -> int:
    return max(1, min(MAX_LANES, round(math.sqrt(count) / LANE_DIVISOR)))


def quantized_frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts scaled to sum to 2^PRECISION, every seen symbol keeping at least 1.

    Rounding error goes to (or comes from) the most frequent symbols, whose cost per unit of
    frequency is the smallest.
    """
    total = 1 << PRECISION
    seen = counts > 0
    freq = np.where(seen, np.maximum(1, np.round(counts * total / counts.sum())), 0).astype(np.int64)
    order = np.argsort(-counts, kind="stable")
    position = 0
    while freq.sum() != total:
        symbol = order[position % int(seen.sum())]
        step = 1 if freq.sum() < total else -1
        if freq[symbol] + step >= 1:
            freq[symbol] += step
        position += 1
    return freq


def rans_compress(data: bytes) -> bytes:
    """``data`` as a 'rans' payload (see ``stages/artifact/rans.py`` for the layout)."""
    symbols = symbols_of(data)
    if not symbols.size:
        return HEAD.pack(0, 0, 0, 0) + np.array([1 << PRECISION], dtype="<u2").tobytes()
    first, last = int(symbols.min()), int(symbols.max())
    symbols -= first
    freq = quantized_frequencies(np.bincount(symbols, minlength=last - first + 1))
    lanes = lane_count(symbols.size)
    state, words = _encode(symbols, freq, lanes)
    return b"".join([HEAD.pack(symbols.size, lanes, first, last), freq.astype("<u2").tobytes(),
                     state.astype("<u4").tobytes(), words.astype("<u2").tobytes()])


def _encode(symbols: np.ndarray, freq: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(final state of every lane, the words in the order the decoder reads them).

    Range ANS is last in, first out: the encoder runs the steps backwards, and the decoder reads
    step 0's refill words first. The last step is padded with the most frequent symbol.
    """
    steps = -(-symbols.size // lanes)
    padded = np.full(steps * lanes, int(np.argmax(freq)), dtype=np.int64)
    padded[: symbols.size] = symbols
    grid = padded.reshape(steps, lanes)
    freq64, cum = freq.astype(np.uint64), cumulative(freq)
    shift, precision, word_bits = np.uint64(32 - PRECISION), np.uint64(PRECISION), np.uint64(WORD_BITS)
    word_mask = np.uint64((1 << WORD_BITS) - 1)
    x = np.full(lanes, STATE_LOW, dtype=np.uint64)
    emitted: list[np.ndarray] = [np.zeros(0, np.uint64)] * steps
    for step in range(steps - 1, -1, -1):
        symbol = grid[step]
        f = freq64[symbol]
        high = x >= (f << shift)  # renormalize so that x stays below 2^32 after coding this symbol
        emitted[step] = x[high] & word_mask
        x[high] >>= word_bits
        x = ((x // f) << precision) + x % f + cum[symbol]
    return x, np.concatenate(emitted)
