"""The encode side of the section codecs: compression levels and the byte shuffle.

Runs in `golf pack` and in quantize's size predictions, never in eval, so it does not ship:
nothing the runtime imports imports it. Its inverse, which eval runs, is ``codecs.py``; the
encoder of golf's own 'rans' coder is ``rans_encode.py``.
"""

from __future__ import annotations

import lzma
import zlib

from ..errors import GolfError
from .codecs import check_codec, check_itemsize
from .rans_encode import rans_compress

# None means the strongest setting: what a 16,000,000-byte budget wants, whatever the time.
# 'rans' has no levels: its one setting is exact (a static table of the byte frequencies).
STRONGEST_LEVEL = {"brotli": 11, "lzma": 9, "zstd": 22, "zlib": 9, "rans": 0}


def _brotli_compress(data: bytes, level: int) -> bytes:
    import brotli

    return brotli.compress(data, quality=level)


def _lzma_compress(data: bytes, level: int) -> bytes:
    return lzma.compress(data, preset=level | lzma.PRESET_EXTREME)


def _zlib_compress(data: bytes, level: int) -> bytes:
    return zlib.compress(data, level)


def _zstd_compress(data: bytes, level: int) -> bytes:
    import zstandard

    # The frame records the content size, so decompression needs no size hint.
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


_COMPRESS = {"brotli": _brotli_compress, "lzma": _lzma_compress, "zstd": _zstd_compress, "zlib": _zlib_compress}


def compress(data: bytes, codec: str, level: int | None = None, segments: list[int] | None = None) -> bytes:
    """``data`` compressed with ``codec`` at ``level`` (None: the codec's strongest). ``segments``
    (byte lengths) split the data into parts of their own statistics: 'rans' gives each its own
    frequency table; the other codecs adapt as they go and ignore it."""
    check_codec(codec)
    if codec == "rans":  # one setting only: exact static tables
        return rans_compress(data, segments)
    try:
        return _COMPRESS[codec](data, STRONGEST_LEVEL[codec] if level is None else level)
    except ImportError as exc:  # brotli and zstandard are imported on first use
        raise GolfError(f"codec {codec} needs the {exc.name} package (pip install {exc.name}); "
                        "lzma, zlib and rans need none") from None


def byte_shuffle(raw: bytes, itemsize: int) -> bytes:
    """Group bytes by their position inside each item: every item's byte 0, then every byte 1, ...

    The high byte of an fp16 value (sign, exponent) takes few distinct values in a tensor while
    the low byte is close to noise; apart, the entropy coder models each stream well,
    interleaved it cannot.
    """
    check_itemsize(raw, itemsize)
    return b"".join(raw[position::itemsize] for position in range(itemsize))
