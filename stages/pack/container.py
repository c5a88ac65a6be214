"""The artifact container: magic, a JSON header, then raw sections. No pickle anywhere.

    b"GOLFPK01" | u32 little-endian header length | header (UTF-8 JSON) | section bytes...

The header lists each section's name, codec, length and sha256 in file order. Every byte of
the file is counted against the 16,000,000-byte limit. This module ships inside the artifact
(it is the first code eval runs on it): stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import struct

MAGIC = b"GOLFPK01"


class ContainerError(ValueError):
    """The bytes are not a well-formed golf artifact."""


def write_container(header: dict, sections: list[tuple[str, str, bytes]]) -> bytes:
    """Serialize ``header`` plus sections given as (name, codec, payload)."""
    header = dict(header)
    header["sections"] = [
        {"name": name, "codec": codec, "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        for name, codec, payload in sections
    ]
    raw_header = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return b"".join([MAGIC, struct.pack("<I", len(raw_header)), raw_header, *(p for _, _, p in sections)])


def read_container(data: bytes) -> tuple[dict, dict[str, bytes]]:
    """Parse and verify an artifact; return (header, {section name: payload})."""
    if data[: len(MAGIC)] != MAGIC:
        raise ContainerError("not a golf artifact (bad magic)")
    start = len(MAGIC) + 4
    if len(data) < start:
        raise ContainerError("truncated artifact header")
    (header_len,) = struct.unpack("<I", data[len(MAGIC) : start])
    try:
        header = json.loads(data[start : start + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ContainerError("artifact header is not valid JSON") from None
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
