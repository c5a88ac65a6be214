"""The artifact container: magic, a compressed JSON header, then raw sections. No pickle anywhere.

    b"GOLFPK02" | u32 little-endian header length | header (xz of UTF-8 JSON) | section bytes...

The header lists each section's name, codec, length and sha256 in file order. Every byte of
the file is counted against the 16,000,000-byte limit, the header too: its JSON (tensor list,
quantization index, model config) is 5-25 KB as plain JSON and a few KB at most as xz, so it is
compressed (xz rather than zlib: smaller on these headers, and its CRC32 guards the header
the way the sha256s guard the sections). This module ships inside the artifact (it is the first
code eval runs on it): stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct

MAGIC = b"GOLFPK02"
_LENGTH = struct.Struct("<I")


class ContainerError(ValueError):
    """The bytes are not a well-formed golf artifact."""


def write_container(header: dict, sections: list[tuple[str, str, bytes]]) -> bytes:
    """Serialize ``header`` plus sections given as (name, codec, payload)."""
    header = dict(header)
    header["sections"] = [
        {"name": name, "codec": codec, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        for name, codec, payload in sections
    ]
    packed = _pack_header(header)
    return b"".join([MAGIC, _LENGTH.pack(len(packed)), packed, *(p for _, _, p in sections)])


def read_container(data: bytes) -> tuple[dict, dict[str, bytes]]:
    """Parse and verify an artifact; return (header, {section name: payload})."""
    if data[: len(MAGIC)] != MAGIC:
        raise ContainerError("not a golf artifact (bad magic)")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise ContainerError("truncated artifact header")
    (header_len,) = _LENGTH.unpack(data[len(MAGIC) : start])
    if len(data) < start + header_len:
        raise ContainerError("truncated artifact header")
    header = _unpack_header(data[start : start + header_len])
    offset = start + header_len
    sections = {}
    for entry in header.get("sections", []):
        payload = data[offset : offset + entry["bytes"]]
        if len(payload) != entry["bytes"]:
            raise ContainerError(f"section {entry['name']!r} is truncated")
        if hashlib.sha256(payload).hexdigest() != entry["sha256"]:
            raise ContainerError(f"section {entry['name']!r} fails its sha256 check")
        sections[entry["name"]] = payload
        offset += entry["bytes"]
    if offset != len(data):
        raise ContainerError(f"{len(data) - offset} unexpected trailing bytes")
    return header, sections


def _pack_header(header: dict) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)


def _unpack_header(packed: bytes) -> dict:
    try:
        header = json.loads(lzma.decompress(packed, format=lzma.FORMAT_XZ).decode("utf-8"))
    except (lzma.LZMAError, UnicodeDecodeError, json.JSONDecodeError):
        raise ContainerError("artifact header is corrupt (not xz-compressed JSON)") from None
    if not isinstance(header, dict):
        raise ContainerError("artifact header is not a JSON object")
    return header
