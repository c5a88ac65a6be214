"""`golf pack --compare`: the bytes of every section, and of the whole artifact, under every codec."""

from __future__ import annotations

from ..artifact.codecs import CODECS
from ..artifact.streams import StreamCodecs
from ..artifact.writer import ArtifactParts, assemble_artifact, compress_streams, smallest
from .config import BEST, codec_choices

# Columns of `golf pack --compare`: every codec, then the per-stream smallest of BEST_CANDIDATES.
COMPARE_COLUMNS = (*CODECS, BEST)
# Every stream under every codec at its strongest level: the payloads each column picks from.
EVERY_CODEC = StreamCodecs(weights=CODECS, codes=CODECS)


def measure_codecs(parts: ArtifactParts) -> dict[str, dict[str, bytes]]:
    """{stream: {codec: payload}} under every codec, at the strongest level."""
    return compress_streams(parts.stream_bytes, EVERY_CODEC, parts.segments)


def compare_codecs(parts: ArtifactParts, measured: dict[str, dict[str, bytes]]) -> dict[str, dict]:
    """Bytes per stream, for code + header, and of the whole artifact under every codec and 'best'.

    Rows are streams then 'code+header' and 'total'; each total is the exact size of the artifact
    that codec would give (its container is assembled, which costs no compression).
    """
    rows: dict[str, dict] = {stream: {"raw": len(raw)} for stream, raw in parts.stream_bytes.items()}
    rows["code+header"], rows["total"] = {}, {}
    for column in COMPARE_COLUMNS:
        payloads = {stream: smallest(options, codec_choices(column)) for stream, options in measured.items()}
        data, breakdown = assemble_artifact(parts, payloads)
        for stream, (codec, payload) in payloads.items():
            rows[stream][column] = len(payload)
            if column == BEST:
                rows[stream]["best_codec"] = codec
        rows["code+header"][column] = breakdown.bytes_code + breakdown.bytes_header
        rows["total"][column] = len(data)
    return rows
