"""The decode side of the section codecs, and the byte unshuffle.

Ships inside the artifact (eval decompresses the weights with it), so it stays stdlib-only at
import time: brotli and zstandard are imported only when a section uses them, and so is golf's own
order-0 entropy coder 'rans' (``rans.py``, numpy). The encode side (compression levels, the byte
shuffle) is ``encode.py``, which does not ship.
"""

from __future__ import annotations

import lzma
import zlib

CODECS = ("brotli", "lzma", "zstd", "zlib", "rans")


def _brotli_decompress(data: bytes) -> bytes:
    import brotli

    return brotli.decompress(data)


def _zstd_decompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)


def _rans_decompress(data: bytes) -> bytes:
    from .rans import rans_decompress

    return rans_decompress(data)


_DECOMPRESS = {"brotli": _brotli_decompress, "lzma": lzma.decompress, "zstd": _zstd_decompress,
               "zlib": zlib.decompress, "rans": _rans_decompress}


def check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def decompress(data: bytes, codec: str) -> bytes:
    """``data`` decompressed; bytes that are not ``codec``'s raise ValueError, whatever the codec."""
    check_codec(codec)
    try:
        return _DECOMPRESS[codec](data)
    except ImportError:
        raise
    except Exception as exc:  # each codec raises an error type of its own (lzma.LZMAError, zlib.error, ...)
        raise ValueError(f"bytes are not {codec}-compressed ({type(exc).__name__})") from None


def byte_unshuffle(raw: bytes, itemsize: int) -> bytes:
    """The exact inverse of the byte shuffle: item i's byte p sits at p * count + i."""
    check_itemsize(raw, itemsize)
    count = len(raw) // itemsize
    out = bytearray(len(raw))
    for position in range(itemsize):
        out[position::itemsize] = raw[position * count : (position + 1) * count]
    return bytes(out)


def check_itemsize(raw: bytes, itemsize: int) -> None:
    if itemsize < 1 or len(raw) % itemsize:
        raise ValueError(f"{len(raw)} bytes do not split into items of {itemsize} bytes")
