"""The artifact container: magic, a compressed JSON header, then raw sections. No pickle anywhere.

    b"GOLFPK" + FORMAT as 2 digits | u32 little-endian header length | header (xz of UTF-8 JSON) | sections...

The magic's digits are the format's only version: any change to the format bumps ``FORMAT``, and
an artifact of another format is refused in one line naming the golf that can read it. The header
lists each section's name, codec, length and sha256 in file order. Every byte of
the file is counted against the 16,000,000-byte limit, the header too: its JSON (tensor list,
quantization index, model config) is 5-25 KB as plain JSON and a few KB at most as xz, so it is
compressed (xz rather than zlib: smaller on these headers, and its CRC32 guards the header
the way the sha256s guard the sections). Reading checks the magic, the section list, every
length and every sha256; what the golf-specific fields must hold is ``schema.py``'s. This module
ships inside the artifact (it is the first code eval runs on it): stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct

FORMAT = 3  # 3: a tensor entry names its ``stream`` (2: its ``group``)
MAGIC_PREFIX = b"GOLFPK"
MAGIC = MAGIC_PREFIX + b"%02d" % FORMAT
_LENGTH = struct.Struct("<I")
# Each section entry of the header, and the JSON type of each of its fields.
SECTION_FIELDS = {"name": str, "codec": str, "bytes": int, "sha256": str}
_JSON_TYPE = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "a JSON object"}


class ContainerError(ValueError):
    """The bytes are not a well-formed golf artifact."""


def check_fields(value, fields: dict[str, type], where: str) -> None:
    """Refuse ``value`` unless it is a JSON object holding each of ``fields`` with its type."""
    if not isinstance(value, dict):
        raise ContainerError(f"artifact header: {where} is not a JSON object")
    for key, kind in fields.items():
        if key not in value:
            raise ContainerError(f"artifact header: {where} has no {key!r}")
        # JSON true/false load as bool, which Python also counts as int: not a count.
        if not isinstance(value[key], kind) or (kind is int and isinstance(value[key], bool)):
            raise ContainerError(f"artifact header: {where}.{key} is not {_JSON_TYPE[kind]}")


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
    _check_magic(data[: len(MAGIC)])
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise ContainerError("truncated artifact header")
    (header_len,) = _LENGTH.unpack(data[len(MAGIC) : start])
    if len(data) < start + header_len:
        raise ContainerError("truncated artifact header")
    header = _unpack_header(data[start : start + header_len])
    offset = start + header_len
    sections = {}
    for entry in _section_entries(header):
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


def _check_magic(magic: bytes) -> None:
    """Refuse bytes that are not a golf artifact, or one of another format than this golf's."""
    digits = magic[len(MAGIC_PREFIX) :]
    if not magic.startswith(MAGIC_PREFIX) or len(digits) != 2 or not digits.isdigit():
        raise ContainerError("not a golf artifact (bad magic)")
    version = int(digits)
    if version < FORMAT:
        raise ContainerError(f"packed by an older golf (artifact format {version}; this golf reads format {FORMAT}): "
                             "repack it with golf pack on its quantize folder")
    if version > FORMAT:
        raise ContainerError(f"packed by a newer golf (artifact format {version}; this golf reads format {FORMAT}): "
                             "read it with that golf")


def _section_entries(header: dict) -> list[dict]:
    entries = header.get("sections")
    if not isinstance(entries, list):
        raise ContainerError("artifact header: 'sections' is not a list")
    for index, entry in enumerate(entries):
        check_fields(entry, SECTION_FIELDS, f"sections[{index}]")
        if entry["bytes"] < 0:
            raise ContainerError(f"artifact header: sections[{index}].bytes is negative")
    names = [entry["name"] for entry in entries]
    if len(set(names)) != len(names):
        raise ContainerError("artifact header: a section name appears twice")
    return entries


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
