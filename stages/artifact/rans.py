"""Decoding the 'rans' section codec: an order-0 entropy coder (range ANS) run with numpy.

The quantized codes of one matrix type are, to a good approximation, independent draws from one
distribution: SDClip makes every row's codes the same rounded bell curve, so their order-0 entropy
is all an entropy coder can get at. brotli, lzma and zstd model repeats and contexts that such
codes do not have and pay for it (prefix codes in brotli, fast-adapting bits in lzma); a static
table of the symbol frequencies with range ANS lands within about 0.1% of that entropy.

Payload, little-endian:
    u32 count | u32 lanes | u8 first | u8 last | u16 freq[last - first + 1] | u32 state[lanes] | u16 words...
Symbols are the bytes rotated by 128, so int8 codes in [-R, R] form one contiguous range
[first, last]; the frequencies sum to 2^PRECISION. The stream is interleaved over ``lanes``
coders: byte i belongs to lane i % lanes, and decoding advances every lane one symbol per step
with array operations, so the Python loop runs count / lanes times. Each lane's state lies in
[2^16, 2^32) and is refilled 16 bits at a time; the encoder starts every lane at 2^16, so a
decoder that ends anywhere else, or with words left over, has read a corrupt payload. This module
ships inside the artifact (eval decodes the weights with it): stdlib and numpy only. The encoder
is `golf pack`'s: ``stages/pack/rans.py``.
"""

from __future__ import annotations

import struct

import numpy as np

PRECISION = 15  # frequencies sum to 2^15, so even a one-symbol table fits a u16
STATE_LOW = 1 << 16  # every lane's state lies in [STATE_LOW, 2^32)
WORD_BITS = 16
ROTATION = 128  # int8 code c is symbol c + 128: a symmetric code range becomes contiguous
HEAD = struct.Struct("<IIBB")


def symbols_of(data: bytes) -> np.ndarray:
    """The symbols of a byte string: each byte rotated by 128 (int8 value + 128)."""
    return (np.frombuffer(data, dtype=np.uint8).astype(np.int64) + ROTATION) % 256


def bytes_of(symbols: np.ndarray) -> bytes:
    """The inverse of ``symbols_of``."""
    return ((symbols - ROTATION) % 256).astype(np.uint8).tobytes()


def cumulative(freq: np.ndarray) -> np.ndarray:
    """Start of each symbol's slot range: cum[s] = freq[0] + ... + freq[s-1]."""
    return np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint64)


def rans_decompress(payload: bytes) -> bytes:
    """The bytes a 'rans' payload encodes; a malformed payload raises ValueError."""
    count, lanes, first, last = HEAD.unpack_from(payload, 0)
    if last < first or (count and not lanes):
        raise ValueError("rans payload has an empty symbol range or no lanes")
    offset = HEAD.size
    freq = np.frombuffer(payload, dtype="<u2", count=last - first + 1, offset=offset).astype(np.uint64)
    offset += 2 * freq.size
    if int(freq.sum()) != 1 << PRECISION:
        raise ValueError("rans frequency table does not sum to 2^15")
    state = np.frombuffer(payload, dtype="<u4", count=lanes, offset=offset).astype(np.uint64)
    words = np.frombuffer(payload, dtype="<u2", offset=offset + 4 * lanes).astype(np.uint64)
    symbols = _decode(state, words, freq, -(-count // lanes)) if count else np.zeros(0, np.int64)
    return bytes_of(symbols[:count] + first)


def _decode(state: np.ndarray, words: np.ndarray, freq: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` x lanes symbols (indices into ``freq``), lane by lane within each step."""
    cum = cumulative(freq)
    symbol_of_slot = np.repeat(np.arange(freq.size), freq.astype(np.int64))
    mask, precision, word_bits = np.uint64((1 << PRECISION) - 1), np.uint64(PRECISION), np.uint64(WORD_BITS)
    out = np.empty((steps, state.size), dtype=np.int64)
    x, read = state.copy(), 0
    for step in range(steps):
        slot = x & mask
        symbol = symbol_of_slot[slot]
        out[step] = symbol
        x = freq[symbol] * (x >> precision) + slot - cum[symbol]
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
