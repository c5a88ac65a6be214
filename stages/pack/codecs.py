"""Byte codecs for artifact sections. Ships inside the artifact; brotli is imported only when used."""

from __future__ import annotations

import lzma
import zlib

CODECS = ("brotli", "lzma", "zlib")


def compress(data: bytes, codec: str, level: int | None = None) -> bytes:
    if codec == "brotli":
        import brotli

        return brotli.compress(data, quality=11 if level is None else level)
    if codec == "lzma":
        return lzma.compress(data, preset=(9 if level is None else level) | lzma.PRESET_EXTREME)
    if codec == "zlib":
        return zlib.compress(data, 9 if level is None else level)
    raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def decompress(data: bytes, codec: str) -> bytes:
    if codec == "brotli":
        import brotli

        return brotli.decompress(data)
    if codec == "lzma":
        return lzma.decompress(data)
    if codec == "zlib":
        return zlib.decompress(data)
    raise ValueError(f"unknown codec {codec!r}")
