"""`golf pack`: quantized weights + the code that evaluates them -> one artifact file, gated on size.

The artifact (``model.golf``) holds a compressed JSON header, the shipped code
(``stages/runtime.py`` and everything it imports, plus the container reader and bundle importer)
and the weights sections, each compressed on its own after a byte shuffle of its multi-byte
tensors. With ``streams="type"`` (the default) the int8 codes of every quantized matrix form one
section, ``weights.codes``, ordered by matrix type (``attn.c_q``, ``mlp.fc``, ``tok_emb``, ...:
every layer's matrix of a type back to back, one segment per type) and coded with ``codes_codec``
(golf's order-0 coder 'rans' by default, one frequency table per type: the codes are
near-independent draws of one distribution per type); the rest (row scales, LQER factors, float
tensors) goes in one section per tensor group, coded with ``codec``. ``streams="group"`` puts
everything in one section per tensor group (attention, mlp, embedding, other), coded with
``codec``. The format itself (container, header fields, sections, the shipped bundle and its
check) is ``stages/artifact``'s: this module only fills it. Its size is the real byte count of
that file. Over the limit, nothing is written and the command exits non-zero with a breakdown,
so CI can gate on it. ``check_artifact`` (``--check``) gates an existing file on its size and on
its code being golf's own.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..artifact.container import write_container
from ..artifact.layout import CODE_SECTION, NUMPY_DTYPES, weights_section
from ..artifact.schema import FORMAT, code_header, encode_code
from ..artifact.verify import installed_sources, read_artifact, vouch_for_code
from ..config import to_dict
from ..contract.stage_dir import StageDir, StageWriter, atomic_write_bytes
from ..errors import GolfError
from ..model.checkpoint import load_tensors_and_metadata
from ..model.groups import GROUPS, tensor_group
from ..progress import Reporter
from .codecs import BEST, BEST_CANDIDATES, CODECS, byte_shuffle, compress
from .config import SIZE_LIMIT, PackConfig

ARTIFACT_FILE = "model.golf"
SIZE_EXIT_CODE = 3
# Columns of `golf pack --compare`: every codec, then the per-group smallest of BEST_CANDIDATES.
COMPARE_COLUMNS = (*CODECS, BEST)
# A matrix's int8 codes are stored as '<parameter>.q'; with streams 'type' they go to the code stream.
CODES_SUFFIX = ".weight.q"
CODE_STREAM = "codes"


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
    streams: dict[str, bytes]
    """Stream -> its tensors' bytes, little-endian, shuffled where the tensor entry says so, in header order."""
    segments: dict[str, list[int]]
    """Stream -> the byte lengths of its parts of one statistics (the code stream: one per matrix type)."""


def build_artifact(tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: PackConfig) -> tuple[bytes, dict]:
    """The artifact bytes and their breakdown by section."""
    parts = artifact_parts(tensors, metadata, config)
    return assemble_artifact(parts, weight_payloads(parts, config))


def artifact_parts(tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: PackConfig) -> ArtifactParts:
    """The header, the compressed code and the weight streams of an artifact."""
    lineage = json.loads(metadata["lineage"])
    entries, streams, segments = tensor_streams(tensors, config.shuffle, config.streams)
    files = installed_sources(with_ttt=config.ship_ttt)
    header = {
        "format": FORMAT,
        "model_config": json.loads(metadata["model_config"]),
        "quant_index": json.loads(metadata["quant_index"]),
        "train_seq_len": int(metadata["train_seq_len"]),
        "lineage": {"tokenizer_sha256": lineage["tokenizer_sha256"], "vocab_size": lineage["vocab_size"]},
        "code": code_header(config.code_codec, files),
        "weights": {"tensors": entries},
    }
    return ArtifactParts(
        header=header,
        code=compress(encode_code(files), config.code_codec),
        code_bytes_uncompressed=sum(len(source.encode("utf-8")) for source in files.values()),
        code_files=len(files),
        streams=streams,
        segments=segments,
    )


def matrix_type(name: str) -> str:
    """The type of a stored code tensor: 'blocks.3.attn.c_q.weight.q' -> 'attn.c_q', 'tok_emb.weight.q' -> 'tok_emb'."""
    parts = name.removesuffix(CODES_SUFFIX).split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        parts = parts[2:]
    return ".".join(parts)


def is_code_stream(stream: str) -> bool:
    return stream == CODE_STREAM


def stream_of(name: str, tensor: torch.Tensor, streams: str) -> str:
    """The stream (and so the section) a stored tensor goes to: with streams 'type', a matrix's
    int8 codes go to the code stream; everything else goes to its tensor group's."""
    if streams == "type" and tensor.dtype == torch.int8 and name.endswith(CODES_SUFFIX):
        return CODE_STREAM
    return tensor_group(name)


def _placement(name: str, stream: str) -> tuple:
    """Sort key: the code stream first, by matrix type then layer, then the tensor groups in order."""
    if is_code_stream(stream):
        return (0, matrix_type(name), _layer(name), name)
    return (1, GROUPS.index(stream), _layer(name), name)


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else -1


def tensor_streams(tensors: dict[str, torch.Tensor], shuffle: bool,
                   streams: str = "type") -> tuple[list[dict], dict[str, bytes], dict[str, list[int]]]:
    """Header entries (stream by stream), each stream's concatenated bytes, and its segments.

    Each stream is a section of its own: groups are quantized with their own bits and clip widths,
    and the codes of one matrix type share one distribution, so a coder does better on one
    distribution at a time than on a stream whose statistics keep switching (and 'best' can pick
    a codec per section). The code stream's segments are its matrix types, each one frequency
    table for 'rans'. The header's ``group`` field of a tensor names its stream.
    """
    placed = {name: stream_of(name, tensor, streams) for name, tensor in tensors.items()}
    entries, chunks, segments = [], {}, {}
    for name in sorted(tensors, key=lambda name: _placement(name, placed[name])):
        stream = placed[name]
        array = _little_endian(name, tensors[name])
        shuffled = shuffle and array.itemsize > 1  # a 1-byte dtype has nothing to shuffle
        raw = array.tobytes()
        chunks.setdefault(stream, []).append(byte_shuffle(raw, array.itemsize) if shuffled else raw)
        part = matrix_type(name) if is_code_stream(stream) else stream
        segments.setdefault(stream, {}).setdefault(part, 0)
        segments[stream][part] += len(raw)
        entries.append({"name": name, "dtype": str(array.dtype), "shape": list(array.shape), "group": stream,
                        "shuffled": shuffled})
    return (entries, {stream: b"".join(parts) for stream, parts in chunks.items()},
            {stream: list(parts.values()) for stream, parts in segments.items()})


def _little_endian(name: str, tensor: torch.Tensor):
    """The tensor as a little-endian numpy array; only dtypes the runtime decodes are accepted."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in NUMPY_DTYPES:
        raise GolfError(f"tensor {name} is {dtype}; an artifact stores only {', '.join(NUMPY_DTYPES)}")
    array = tensor.detach().cpu().contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"))


def compress_streams(streams: dict[str, bytes], codecs: tuple[str, ...] | dict[str, tuple[str, ...]],
                     level: int | None, segments: dict[str, list[int]] | None = None) -> dict[str, dict[str, bytes]]:
    """{stream: {codec: payload}} for every stream under each of its codecs (``codecs``: the same
    for every stream, or per stream). ``level`` applies to all but the code stream, which is
    always coded at its codec's strongest; ``segments`` are passed on to the codec ('rans' uses them).

    The jobs run on threads: the codecs release the GIL, and brotli 11 alone takes about a minute
    on a full-size model, so the streams and codecs overlap on the cores there are.
    """
    per_stream = codecs if isinstance(codecs, dict) else {stream: codecs for stream in streams}
    jobs = [(stream, codec) for stream in streams for codec in per_stream[stream]]

    segments = segments or {}

    def run(job):
        stream, codec = job
        return compress(streams[stream], codec, None if is_code_stream(stream) else level, segments.get(stream))

    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        payloads = list(pool.map(run, jobs))
    out: dict[str, dict[str, bytes]] = {stream: {} for stream in streams}
    for (stream, codec), payload in zip(jobs, payloads):
        out[stream][codec] = payload
    return out


def codec_choices(codec: str) -> tuple[str, ...]:
    """The codecs a configured codec stands for: itself, or the candidates of 'best'."""
    return BEST_CANDIDATES if codec == BEST else (codec,)


def stream_codecs(streams, config: PackConfig) -> dict[str, tuple[str, ...]]:
    """The codecs each stream may be coded with: ``codes_codec``'s for code streams, ``codec``'s for the rest."""
    return {stream: codec_choices(config.codes_codec if is_code_stream(stream) else config.codec)
            for stream in streams}


def smallest(options: dict[str, bytes], allowed: tuple[str, ...]) -> tuple[str, bytes]:
    """(codec, payload) of the smallest payload among ``allowed`` (ties: the first allowed)."""
    codec = min(allowed, key=lambda name: len(options[name]))
    return codec, options[codec]


def weight_payloads(parts: ArtifactParts, config: PackConfig,
                    measured: dict[str, dict[str, bytes]] | None = None) -> dict[str, tuple[str, bytes]]:
    """Each stream's (codec, payload) under the config's codecs.

    ``measured`` holds payloads already made at the strongest level (by ``--compare``); they are
    reused unless the config asks for another level.
    """
    allowed = stream_codecs(parts.streams, config)
    if measured is None or config.level is not None:
        measured = compress_streams(parts.streams, allowed, config.level, parts.segments)
    return {stream: smallest(options, allowed[stream]) for stream, options in measured.items()}


def assemble_artifact(parts: ArtifactParts, payloads: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    """The container bytes from the parts and each group's (codec, payload), with the breakdown."""
    sections = [(CODE_SECTION, parts.header["code"]["codec"], parts.code)]
    sections += [(weights_section(group), codec, payload) for group, (codec, payload) in payloads.items()]
    data = write_container(parts.header, sections)
    bytes_weights = sum(len(payload) for _, payload in payloads.values())
    breakdown = {
        "bytes_total": len(data),
        "bytes_header": len(data) - len(parts.code) - bytes_weights,
        "bytes_code": len(parts.code),
        "bytes_code_uncompressed": parts.code_bytes_uncompressed,
        "code_files": parts.code_files,
        "bytes_weights": bytes_weights,
        "bytes_weights_uncompressed": sum(len(stream) for stream in parts.streams.values()),
        "groups": {
            group: {"codec": codec, "bytes": len(payload), "bytes_uncompressed": len(parts.streams[group])}
            for group, (codec, payload) in payloads.items()
        },
    }
    return data, breakdown


def compare_codecs(parts: ArtifactParts, measured: dict[str, dict[str, bytes]]) -> dict[str, dict]:
    """Bytes per group, for code + header, and of the whole artifact under every codec and 'best'.

    Rows are groups then 'code+header' and 'total'; each total is the exact size of the artifact
    that codec would give (its container is assembled, which costs no compression).
    """
    rows: dict[str, dict] = {group: {"raw": len(stream)} for group, stream in parts.streams.items()}
    rows["code+header"], rows["total"] = {}, {}
    for column in COMPARE_COLUMNS:
        payloads = {group: smallest(options, codec_choices(column)) for group, options in measured.items()}
        data, breakdown = assemble_artifact(parts, payloads)
        for group, (codec, payload) in payloads.items():
            rows[group][column] = len(payload)
            if column == BEST:
                rows[group]["best_codec"] = codec
        rows["code+header"][column] = breakdown["bytes_code"] + breakdown["bytes_header"]
        rows["total"][column] = len(data)
    return rows


def size_verdict(total: int, limit: int) -> dict:
    """PASS at or under the limit, to the byte, with the margin left (negative when over)."""
    return {"bytes_total": total, "limit": limit, "margin": limit - total, "verdict": "PASS" if total <= limit else "FAIL"}


def over_limit_message(verdict: dict, counted: str = "artifact") -> str:
    """The one-line reason of a FAIL verdict; ``counted`` names what the bytes are."""
    return (f"{counted} is {verdict['bytes_total']:,} bytes, over the {verdict['limit']:,}-byte limit "
            f"by {-verdict['margin']:,}")


def run_pack(config: PackConfig, quantize_dir: str | Path, out_dir: str | Path, force: bool = False,
             reporter: Reporter | None = None, compare: bool = False,
             show_comparison: Callable[[dict], None] | None = None):
    """Pack the quantized weights; with ``compare``, first measure every codec per group.

    ``show_comparison`` receives the comparison rows before the size gate runs (the CLI draws
    them as a table), so they are shown even when the artifact turns out too big.
    """
    reporter = reporter or Reporter()
    quant = StageDir(quantize_dir, "quantize")
    with StageWriter(out_dir, "pack", force, reporter, {"the quantize folder": quant.path}) as writer:
        with writer.ledger.measure("compress", note="packing happens after training: outside both budgets"):
            tensors, metadata = load_tensors_and_metadata(quant.file("quantized"))
            parts = artifact_parts(tensors, metadata, config)
            measured = comparison = None
            if compare:
                measured = compress_streams(parts.streams, CODECS, None, parts.segments)
                comparison = compare_codecs(parts, measured)
                _report_comparison(comparison, reporter, show_comparison)
            data, breakdown = assemble_artifact(parts, weight_payloads(parts, config, measured))
        verdict = size_verdict(len(data), config.limit)
        reporter.log(stage="pack", **flat_breakdown(breakdown), limit=config.limit, margin=verdict["margin"],
                     verdict=verdict["verdict"])
        if verdict["verdict"] == "FAIL":
            raise GolfError(
                f"{over_limit_message(verdict)} (code {breakdown['bytes_code']:,}, weights "
                f"{breakdown['bytes_weights']:,}, header {breakdown['bytes_header']:,}); nothing written",
                exit_code=SIZE_EXIT_CODE,
            )
        atomic_write_bytes(writer.path(ARTIFACT_FILE), data)
        writer.add_input("quantized", quant)
        writer.add_output("artifact", writer.path(ARTIFACT_FILE))
        metrics = {**breakdown, **verdict, **({"compare": comparison} if comparison else {})}
        manifest = writer.commit(to_dict(config), dict(quant.lineage), metrics, reporter.text())
    return manifest


def flat_breakdown(breakdown: dict) -> dict:
    """The breakdown as one level of keys for a log line (groups become <group>_bytes, ...)."""
    flat = {key: value for key, value in breakdown.items() if key != "groups"}
    for group, sizes in breakdown["groups"].items():
        flat[f"{group}_codec"] = sizes["codec"]
        flat[f"{group}_bytes"] = sizes["bytes"]
        flat[f"{group}_bytes_uncompressed"] = sizes["bytes_uncompressed"]
    return flat


def _report_comparison(rows: dict[str, dict], reporter: Reporter, show: Callable[[dict], None] | None) -> None:
    for row, sizes in rows.items():
        reporter.log(compare=row, **sizes)
    if show is not None:
        show(rows)


def check_artifact(path: str | Path, limit: int = SIZE_LIMIT, trust_code: bool = False,
                   reporter: Reporter | None = None, code_file: str | Path | None = None) -> dict:
    """The gate on an existing artifact file: well-formed, its code golf's own, real bytes against the limit.

    Foreign code is refused (a one-line error naming the files) unless ``trust_code``; the
    verdict records the code check either way. ``code_file`` (a submission's train_gpt.py) is
    shipped beside the artifact: its real bytes count toward the limit too.
    """
    artifact = read_artifact(path)
    code = vouch_for_code(artifact, trust_code, reporter or Reporter())
    counted = {}
    if code_file is not None:
        if not Path(code_file).is_file():
            raise GolfError(f"{code_file}: no such code file")
        counted = {"bytes_artifact": len(artifact.data), "bytes_code_file": Path(code_file).stat().st_size}
    return {**counted, **size_verdict(len(artifact.data) + counted.get("bytes_code_file", 0), limit),
            **code.record(trust_code)}
