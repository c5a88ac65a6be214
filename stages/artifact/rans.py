"""Decoding the 'rans' section codec: an order-0 entropy coder (range ANS) run with numpy.

The quantized codes of one matrix type are, to a good approximation, independent draws from one
distribution: SDClip makes every row's codes the same rounded bell curve, so their order-0 entropy
is what an entropy coder can get at. brotli, lzma and zstd model repeats and contexts that such
codes do not have and pay for it (prefix codes in brotli, fast-adapting bits in lzma); a static
frequency table with range ANS lands within about 0.1% of that entropy.

A payload is one or more segments (the codes of one matrix type each), every segment with its own
frequency table, all coded by one set of interleaved coders. Little-endian:
    u32 lanes | u16 segments | per segment: u32 count, u8 first, u8 last, u16 freq[last - first + 1]
    | u64 state[lanes] | u32 words...
Symbols are the bytes rotated by 128, so int8 codes in [-R, R] form one contiguous range
[first, last]; each table sums to 2^PRECISION. Byte i of the concatenated segments belongs to
lane i % lanes: decoding advances every lane one symbol per step with array operations, so the
Python loop runs (total / lanes) times. A lane's state lies in [2^31, 2^63) and is refilled 32
bits at a time (a 64-bit state keeps the rounding loss of range ANS negligible: with a 32-bit one
it cost ~0.03%); the encoder starts every lane at 2^31, so a decoder that ends anywhere else, or
with words left over, has read a corrupt payload. Ships inside the artifact (eval decodes the
weights with it): stdlib and numpy only. The encoder is ``rans_encode.py`` (not shipped).
"""

from __future__ import annotations

import struct

import numpy as np

PRECISION = 15  # each table sums to 2^15, so even a one-symbol table fits a u16
STATE_LOW = 1 << 31  # every lane's state lies in [STATE_LOW, 2^63)
WORD_BITS = 32
ROTATION = 128  # int8 code c is symbol c + 128: a symmetric code range becomes contiguous
HEAD = struct.Struct("<IH")
SEGMENT = struct.Struct("<IBB")


def symbols_of(data: bytes) -> np.ndarray:
    """The symbols of a byte string: each byte rotated by 128 (int8 value + 128)."""
    return (np.frombuffer(data, dtype=np.uint8).astype(np.int64) + ROTATION) % 256


def bytes_of(symbols: np.ndarray) -> bytes:
    """The inverse of ``symbols_of``."""
    return ((symbols - ROTATION) % 256).astype(np.uint8).tobytes()


class Tables:
    """Every segment's table, padded to a common width: freq[segment, symbol] and friends, where
    a symbol is counted from its segment's ``first``."""

    def __init__(self, tables: list[np.ndarray], firsts: list[int]):
        width = max(table.size for table in tables)
        self.freq = np.zeros((len(tables), width), dtype=np.uint64)
        for segment, table in enumerate(tables):
            self.freq[segment, : table.size] = table
        self.cum = np.concatenate([np.zeros((len(tables), 1), np.uint64), np.cumsum(self.freq, axis=1)[:, :-1]], axis=1)
        self.first = np.array(firsts, dtype=np.int64)

    def symbol_of_slot(self) -> np.ndarray:
        """[segment, slot] -> the symbol whose slot range holds ``slot`` (the decoder's lookup)."""
        return np.stack([np.repeat(np.arange(row.size), row.astype(np.int64)) for row in self.freq])


def segment_of_step(starts: np.ndarray, lanes: int, step: int):
    """The segment of every lane's position in ``step`` (``starts``: each segment's first position;
    the padding past the end belongs to the last): one int when the step lies in one segment."""
    start = step * lanes
    first, last = np.searchsorted(starts, [start, start + lanes - 1], side="right") - 1
    if first == last:
        return int(first)
    return np.searchsorted(starts, np.arange(start, start + lanes), side="right") - 1


def rans_decompress(payload: bytes) -> bytes:
    """The bytes a 'rans' payload encodes; a malformed payload raises ValueError."""
    lanes, count = HEAD.unpack_from(payload, 0)
    offset, counts, tables, firsts = HEAD.size, [], [], []
    for _ in range(count):
        size, first, last = SEGMENT.unpack_from(payload, offset)
        if last < first:
            raise ValueError("rans segment has an empty symbol range")
        freq = np.frombuffer(payload, dtype="<u2", count=last - first + 1, offset=offset + SEGMENT.size)
        if int(freq.sum()) != 1 << PRECISION:
            raise ValueError("rans segment table does not sum to 2^15")
        counts.append(size), tables.append(freq.astype(np.uint64)), firsts.append(first)
        offset += SEGMENT.size + 2 * freq.size
    total = sum(counts)
    if not total:
        return b""
    if not lanes:
        raise ValueError("rans payload has symbols but no lanes")
    state = np.frombuffer(payload, dtype="<u8", count=lanes, offset=offset).astype(np.uint64)
    words = np.frombuffer(payload, dtype="<u4", offset=offset + 8 * lanes).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    symbols = _decode(state, words, Tables(tables, firsts), starts, -(-total // lanes))
    return bytes_of(symbols[:total])


def _decode(state: np.ndarray, words: np.ndarray, tables: Tables, starts: np.ndarray, steps: int) -> np.ndarray:
    """Every lane's symbols, step by step (the last step runs past the end into padding)."""
    lanes = state.size
    symbol_of_slot = tables.symbol_of_slot()
    mask, precision, word_bits = np.uint64((1 << PRECISION) - 1), np.uint64(PRECISION), np.uint64(WORD_BITS)
    out = np.empty((steps, lanes), dtype=np.int64)
    x, read = state.copy(), 0
    for step in range(steps):
        segment = segment_of_step(starts, lanes, step)
        slot = x & mask
        symbol = symbol_of_slot[segment, slot]
        out[step] = symbol + tables.first[segment]
        x = tables.freq[segment, symbol] * (x >> precision) + slot - tables.cum[segment, symbol]
        low = x < STATE_LOW
        need = int(low.sum())
        refill = words[read : read + need]
        if refill.size != need:
            raise ValueError("rans payload ends early")
        x[low] = (x[low] << word_bits) | refill
        read += need
    if read != words.size or np.any(x != STATE_LOW):
        raise ValueError("rans payload does not decode to its initial states (corrupt)")
    return out.reshape(-1)
