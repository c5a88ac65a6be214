"""`golf pack`: quantized weights + the code that evaluates them -> one artifact file, gated on size.

The artifact (``model.golf``) holds a compressed JSON header, the shipped code
(``stages/runtime.py`` and everything it imports, plus the container reader and bundle importer)
and one weights section per tensor group (attention, mlp, embedding, other), each compressed on
its own after a byte shuffle of its multi-byte tensors. The format itself (container, header
fields, sections, the shipped bundle and its check) is ``stages/artifact``'s: this module only
fills it. Its size is the real byte count of that file. Over the limit, nothing is written and
the command exits non-zero with a breakdown, so CI can gate on it. ``check_artifact`` (``--check``)
gates an existing file on its size and on its code being golf's own.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

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
from ..ranges import ConfigError, check_ranges, ranged
from .codecs import BEST_CANDIDATES, CODECS, STRONGEST_LEVEL, byte_shuffle, compress

ARTIFACT_FILE = "model.golf"
SIZE_LIMIT = 16_000_000
SIZE_EXIT_CODE = 3
BEST = "best"
# Columns of `golf pack --compare`: every codec, then the per-group smallest of BEST_CANDIDATES.
COMPARE_COLUMNS = (*CODECS, BEST)


@dataclass(frozen=True)
class PackConfig:
    """How the artifact is compressed and the size it must fit."""

    codec: Literal["brotli", "lzma", "zstd", "zlib", "best"] = "brotli"
    """Codec of each weights section (brotli 11 by default); 'best': per group the smallest of brotli/lzma/zstd."""
    level: int | None = ranged(None, ge=0)
    """Codec level (None: the strongest: brotli 11, lzma 9e, zstd 22, zlib 9); unset with 'best'."""
    shuffle: bool = True
    """Byte-shuffle multi-byte tensors before compression (all first bytes, then all second bytes, ...)."""
    code_codec: Literal["brotli", "lzma", "zstd", "zlib"] = "lzma"
    """Codec of the shipped code section (lzma needs no third-party package to unpack)."""
    limit: int = ranged(SIZE_LIMIT, ge=1)
    """Size limit in bytes (decimal: 16,000,000 in the challenge)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.codec == BEST and self.level is not None:
            raise ConfigError("level", "a level belongs to one codec; leave it unset with codec 'best'")
        if self.level is not None and self.level > STRONGEST_LEVEL[self.codec]:
            raise ConfigError("level", f"must be at most {STRONGEST_LEVEL[self.codec]} for {self.codec}, got {self.level}")


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
    """Group -> its tensors' bytes, little-endian, shuffled where the tensor entry says so, in header order."""


def build_artifact(tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: PackConfig) -> tuple[bytes, dict]:
    """The artifact bytes and their breakdown by section."""
    parts = artifact_parts(tensors, metadata, config)
    return assemble_artifact(parts, weight_payloads(parts.streams, config))


def artifact_parts(tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: PackConfig) -> ArtifactParts:
    """The header, the compressed code and the per-group weight streams of an artifact."""
    lineage = json.loads(metadata["lineage"])
    entries, streams = tensor_streams(tensors, config.shuffle)
    files = installed_sources()
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
    )


def tensor_streams(tensors: dict[str, torch.Tensor], shuffle: bool) -> tuple[list[dict], dict[str, bytes]]:
    """Header entries (group by group, by name inside a group) and each group's concatenated bytes.

    Each group is a stream of its own: groups are quantized with their own bits and clip widths,
    so their code statistics differ, and an adaptive coder does better on one distribution at a
    time than on a stream whose statistics keep switching (and 'best' can pick a codec per group).
    """
    entries, chunks = [], {}
    for name in sorted(tensors, key=lambda name: (GROUPS.index(tensor_group(name)), name)):
        group = tensor_group(name)
        array = _little_endian(name, tensors[name])
        shuffled = shuffle and array.itemsize > 1  # a 1-byte dtype has nothing to shuffle
        raw = array.tobytes()
        chunks.setdefault(group, []).append(byte_shuffle(raw, array.itemsize) if shuffled else raw)
        entries.append({"name": name, "dtype": str(array.dtype), "shape": list(array.shape), "group": group,
                        "shuffled": shuffled})
    return entries, {group: b"".join(parts) for group, parts in chunks.items()}


def _little_endian(name: str, tensor: torch.Tensor):
    """The tensor as a little-endian numpy array; only dtypes the runtime decodes are accepted."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in NUMPY_DTYPES:
        raise GolfError(f"tensor {name} is {dtype}; an artifact stores only {', '.join(NUMPY_DTYPES)}")
    array = tensor.detach().cpu().contiguous().numpy()
    return array.astype(array.dtype.newbyteorder("<"))


def compress_streams(streams: dict[str, bytes], codecs: tuple[str, ...], level: int | None) -> dict[str, dict[str, bytes]]:
    """{group: {codec: payload}} for every group under every codec.

    The jobs run on threads: the codecs release the GIL, and brotli 11 alone takes about a minute
    on a full-size model, so the groups and codecs overlap on the cores there are.
    """
    jobs = [(group, codec) for group in streams for codec in codecs]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        payloads = list(pool.map(lambda job: compress(streams[job[0]], job[1], level), jobs))
    out: dict[str, dict[str, bytes]] = {group: {} for group in streams}
    for (group, codec), payload in zip(jobs, payloads):
        out[group][codec] = payload
    return out


def codec_choices(codec: str) -> tuple[str, ...]:
    """The codecs a configured codec stands for: itself, or the candidates of 'best'."""
    return BEST_CANDIDATES if codec == BEST else (codec,)


def smallest(options: dict[str, bytes], allowed: tuple[str, ...]) -> tuple[str, bytes]:
    """(codec, payload) of the smallest payload among ``allowed`` (ties: the first allowed)."""
    codec = min(allowed, key=lambda name: len(options[name]))
    return codec, options[codec]


def weight_payloads(streams: dict[str, bytes], config: PackConfig,
                    measured: dict[str, dict[str, bytes]] | None = None) -> dict[str, tuple[str, bytes]]:
    """Each group's (codec, payload) under ``config.codec``.

    ``measured`` holds payloads already made at the strongest level (by ``--compare``); they are
    reused unless the config asks for another level.
    """
    allowed = codec_choices(config.codec)
    if measured is None or config.level is not None:
        measured = compress_streams(streams, allowed, config.level)
    return {group: smallest(options, allowed) for group, options in measured.items()}


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


def over_limit_message(verdict: dict) -> str:
    """The one-line reason of a FAIL verdict."""
    return (f"artifact is {verdict['bytes_total']:,} bytes, over the {verdict['limit']:,}-byte limit "
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
    with StageWriter(out_dir, "pack", force) as writer:
        with writer.ledger.measure("compress", note="packing happens after training: outside both budgets"):
            tensors, metadata = load_tensors_and_metadata(quant.file("quantized"))
            parts = artifact_parts(tensors, metadata, config)
            measured = comparison = None
            if compare:
                measured = compress_streams(parts.streams, CODECS, None)
                comparison = compare_codecs(parts, measured)
                _report_comparison(comparison, reporter, show_comparison)
            data, breakdown = assemble_artifact(parts, weight_payloads(parts.streams, config, measured))
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
                   reporter: Reporter | None = None) -> dict:
    """The gate on an existing artifact file: well-formed, its code golf's own, real bytes against the limit.

    Foreign code is refused (a one-line error naming the files) unless ``trust_code``; the
    verdict records the code check either way.
    """
    artifact = read_artifact(path)
    code = vouch_for_code(artifact, trust_code, reporter or Reporter())
    return {**size_verdict(len(artifact.data), limit), **code.record(trust_code)}
