"""Byte codecs and the byte shuffle for artifact sections.

Ships inside the artifact (eval decompresses the weights with it), so it stays stdlib-only at
import time: brotli and zstandard are imported only when a section uses them.
"""

from __future__ import annotations

import lzma
import zlib

CODECS = ("brotli", "lzma", "zstd", "zlib")
# The contenders of codec "best"; zlib is kept for comparison but never beats these on weights.
BEST_CANDIDATES = ("brotli", "lzma", "zstd")
# None means the strongest setting: what a 16,000,000-byte budget wants, whatever the time.
STRONGEST_LEVEL = {"brotli": 11, "lzma": 9, "zstd": 22, "zlib": 9}


def _brotli_compress(data: bytes, level: int) -> bytes:
    import brotli

    return brotli.compress(data, quality=level)


def _brotli_decompress(data: bytes) -> bytes:
    import brotli

    return brotli.decompress(data)


def _lzma_compress(data: bytes, level: int) -> bytes:
    return lzma.compress(data, preset=level | lzma.PRESET_EXTREME)


def _zlib_compress(data: bytes, level: int) -> bytes:
    return zlib.compress(data, level)


def _zstd_compress(data: bytes, level: int) -> bytes:
    import zstandard

    # The frame records the content size, so decompression needs no size hint.
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def _zstd_decompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)


_COMPRESS = {"brotli": _brotli_compress, "lzma": _lzma_compress, "zstd": _zstd_compress, "zlib": _zlib_compress}
_DECOMPRESS = {"brotli": _brotli_decompress, "lzma": lzma.decompress, "zstd": _zstd_decompress,
               "zlib": zlib.decompress}


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def compress(data: bytes, codec: str, level: int | None = None) -> bytes:
    """``data`` compressed with ``codec`` at ``level`` (None: the codec's strongest)."""
    _check_codec(codec)
    return _COMPRESS[codec](data, STRONGEST_LEVEL[codec] if level is None else level)


def decompress(data: bytes, codec: str) -> bytes:
    _check_codec(codec)
    return _DECOMPRESS[codec](data)


def byte_shuffle(raw: bytes, itemsize: int) -> bytes:
    """Group bytes by their position inside each item: every item's byte 0, then every byte 1, ...

    The high byte of an fp16 value (sign, exponent) takes few distinct values in a tensor while
    the low byte is close to noise; apart, the entropy coder models each stream well,
    interleaved it cannot.
    """
    _check_itemsize(raw, itemsize)
    return b"".join(raw[position::itemsize] for position in range(itemsize))


def byte_unshuffle(raw: bytes, itemsize: int) -> bytes:
    """The exact inverse of ``byte_shuffle``."""
    _check_itemsize(raw, itemsize)
    count = len(raw) // itemsize
    out = bytearray(len(raw))
    for position in range(itemsize):
        out[position::itemsize] = raw[position * count : (position + 1) * count]
    return bytes(out)


def _check_itemsize(raw: bytes, itemsize: int) -> None:
    if itemsize < 1 or len(raw) % itemsize:
        raise ValueError(f"{len(raw)} bytes do not split into items of {itemsize} bytes")
