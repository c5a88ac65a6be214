"""Writing an artifact: quantized weights + the shipped code -> the container's bytes, with their breakdown.

The steps, each usable alone (`golf pack --compare` compresses every stream under every codec
once and assembles an artifact per codec from the same payloads):
  ``artifact_parts``: the header, the compressed code section and each stream's raw bytes;
  ``compress_streams`` / ``weight_payloads``: each stream compressed, the smallest candidate kept;
  ``assemble_artifact``: the container bytes and a ``Breakdown`` of where they go.
``build_artifact`` runs all three. Which codecs and layout to use is the caller's choice (`golf
pack`'s config, quantize's size prediction); what the bytes mean is this package's. Runs in golf,
never shipped.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from .container import write_container
from .encode import compress
from .layout import CODE_SECTION, weights_section
from .quantized import QuantizedMetadata
from .schema import code_header, encode_code, make_header
from .streams import StreamCodecs, tensor_streams
from .verify import installed_sources


@dataclass(frozen=True)
class Layout:
    """How the tensors are split into sections, and what code ships."""

    streams: Literal["type", "group"] = "type"
    """'type': every matrix's int8 codes in the code stream, the rest by tensor group; 'group': one
    stream per tensor group (``streams.py``)."""
    shuffle: bool = True
    """Byte-shuffle multi-byte tensors before compression."""
    code_codec: Literal["brotli", "lzma", "zstd", "zlib"] = "lzma"
    """Codec of the shipped code section."""
    ship_ttt: bool = True
    """Ship the test-time training code beside the runtime."""


@dataclass(frozen=True)
class ArtifactParts:
    """Everything an artifact holds except the compressed weights, which depend on the codec."""

    header: dict
    """Header fields: model config, quantization index, lineage, the code entry and the tensor list."""
    code: bytes
    """The compressed code section (a JSON {path: source} of the shipped modules)."""
    code_bytes_uncompressed: int
    """UTF-8 bytes of the shipped sources."""
    code_files: int
    """Number of shipped modules."""
    stream_bytes: dict[str, bytes]
    """Stream -> its tensors' bytes, little-endian, shuffled where the tensor entry says so, in header order."""
    segments: dict[str, list[int]]
    """Stream -> the byte lengths of its parts of one statistics (the code stream: one per matrix type)."""


@dataclass(frozen=True)
class StreamSize:
    """One weights section's codec and sizes."""

    codec: str
    """The codec its payload is compressed with."""
    bytes: int
    """Its compressed bytes."""
    bytes_uncompressed: int
    """Its stream's bytes before compression."""


@dataclass(frozen=True)
class Breakdown:
    """Where an artifact's bytes go: header + code + weights = total, to the byte."""

    bytes_total: int
    """The whole file."""
    bytes_header: int
    """Magic, header length and the compressed header."""
    bytes_code: int
    """The compressed code section."""
    bytes_code_uncompressed: int
    """UTF-8 bytes of the shipped sources."""
    code_files: int
    """Number of shipped modules."""
    bytes_weights: int
    """All weights sections."""
    bytes_weights_uncompressed: int
    """All streams before compression."""
    streams: dict[str, StreamSize]
    """Stream -> its section's codec and sizes, in file order."""

    def as_dict(self) -> dict:
        """The manifest's form: the fields, with the streams under ``groups`` (their name before streams)."""
        fields = asdict(self)
        fields["groups"] = fields.pop("streams")
        return fields

    def flat(self) -> dict:
        """One level of keys for a log line: each stream's fields become <stream>_codec, <stream>_bytes, ..."""
        fields = {key: value for key, value in asdict(self).items() if key != "streams"}
        for stream, size in self.streams.items():
            fields.update({f"{stream}_{key}": value for key, value in asdict(size).items()})
        return fields


def build_artifact(tensors: dict[str, torch.Tensor], quantized: QuantizedMetadata, layout: Layout = Layout(),
                   codecs: StreamCodecs = StreamCodecs()) -> tuple[bytes, Breakdown]:
    """The artifact bytes and their breakdown by section."""
    parts = artifact_parts(tensors, quantized, layout)
    return assemble_artifact(parts, weight_payloads(parts, codecs))


def artifact_parts(tensors: dict[str, torch.Tensor], quantized: QuantizedMetadata,
                   layout: Layout = Layout()) -> ArtifactParts:
    """The header, the compressed code and the weight streams of an artifact."""
    entries, stream_bytes, segments = tensor_streams(tensors, layout.shuffle, layout.streams)
    files = installed_sources(with_ttt=layout.ship_ttt)
    return ArtifactParts(
        header=make_header(quantized, code_header(layout.code_codec, files), entries),
        code=compress(encode_code(files), layout.code_codec),
        code_bytes_uncompressed=sum(len(source.encode("utf-8")) for source in files.values()),
        code_files=len(files),
        stream_bytes=stream_bytes,
        segments=segments,
    )


def compress_streams(stream_bytes: dict[str, bytes], codecs: StreamCodecs,
                     segments: dict[str, list[int]] | None = None) -> dict[str, dict[str, bytes]]:
    """{stream: {codec: payload}} for every stream under each of its candidate codecs; ``segments``
    are passed on to the codec ('rans' uses them).

    The jobs run on threads: the codecs release the GIL, and brotli 11 alone takes about a minute
    on a full-size model, so the streams and codecs overlap on the cores there are.
    """
    jobs = [(stream, codec) for stream in stream_bytes for codec in codecs.of(stream)]
    segments = segments or {}

    def run(job):
        stream, codec = job
        return compress(stream_bytes[stream], codec, codecs.level_of(stream), segments.get(stream))

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        payloads = list(pool.map(run, jobs))
    out: dict[str, dict[str, bytes]] = {stream: {} for stream in stream_bytes}
    for (stream, codec), payload in zip(jobs, payloads):
        out[stream][codec] = payload
    return out


def smallest(options: dict[str, bytes], allowed: tuple[str, ...]) -> tuple[str, bytes]:
    """(codec, payload) of the smallest payload among ``allowed`` (ties: the first allowed)."""
    codec = min(allowed, key=lambda name: len(options[name]))
    return codec, options[codec]


def weight_payloads(parts: ArtifactParts, codecs: StreamCodecs,
                    measured: dict[str, dict[str, bytes]] | None = None) -> dict[str, tuple[str, bytes]]:
    """Each stream's (codec, payload): the smallest of its candidates.

    ``measured`` holds payloads already made at the strongest level (by ``--compare``); they are
    reused unless ``codecs`` asks for another level.
    """
    if measured is None or codecs.level is not None:
        measured = compress_streams(parts.stream_bytes, codecs, parts.segments)
    return {stream: smallest(options, codecs.of(stream)) for stream, options in measured.items()}


def assemble_artifact(parts: ArtifactParts, payloads: dict[str, tuple[str, bytes]]) -> tuple[bytes, Breakdown]:
    """The container bytes from the parts and each stream's (codec, payload), with the breakdown."""
    sections = [(CODE_SECTION, parts.header["code"]["codec"], parts.code)]
    sections += [(weights_section(stream), codec, payload) for stream, (codec, payload) in payloads.items()]
    data = write_container(parts.header, sections)
    bytes_weights = sum(len(payload) for _, payload in payloads.values())
    return data, Breakdown(
        bytes_total=len(data),
        bytes_header=len(data) - len(parts.code) - bytes_weights,
        bytes_code=len(parts.code),
        bytes_code_uncompressed=parts.code_bytes_uncompressed,
        code_files=parts.code_files,
        bytes_weights=bytes_weights,
        bytes_weights_uncompressed=sum(len(stream) for stream in parts.stream_bytes.values()),
        streams={stream: StreamSize(codec, len(payload), len(parts.stream_bytes[stream]))
                 for stream, (codec, payload) in payloads.items()},
    )
