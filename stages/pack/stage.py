"""`golf pack`: quantized weights + the code that evaluates them -> one artifact file, gated on size.

The artifact (``model.golf``) holds a JSON header, the shipped code (``stages/runtime.py`` and
everything it imports, plus the container reader and bundle importer) and the weights, each
section compressed. Its size is the real byte count of that file. Over the limit, nothing is
written and the command exits non-zero with a breakdown, so CI can gate on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..config import to_dict
from ..contract.stage_dir import StageDir, StageWriter, atomic_write_bytes
from ..errors import GolfError
from ..model.checkpoint import load_tensors_and_metadata
from ..progress import Reporter
from .bundle import bundle_id, collect_sources
from .codecs import compress
from .container import ContainerError, read_container, write_container

CODE_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENTRY = "stages/runtime.py"
# Eval parses the container and imports the bundle with these before the shipped code takes
# over; they ship too, and eval checks the installed copies are byte-identical to them.
BOOTSTRAP_FILES = ("stages/pack/container.py", "stages/pack/bundle.py")
ARTIFACT_FILE = "model.golf"
SIZE_LIMIT = 16_000_000
SIZE_EXIT_CODE = 3


@dataclass(frozen=True)
class PackConfig:
    """How the artifact is compressed and the size it must fit."""

    codec: Literal["brotli", "lzma", "zlib"] = "brotli"
    """Codec of the weights section (brotli at quality 11 by default)."""
    level: int | None = None
    """Codec level (None: the strongest: brotli 11, lzma 9e, zlib 9)."""
    code_codec: Literal["brotli", "lzma", "zlib"] = "lzma"
    """Codec of the shipped code section (lzma needs no third-party package to unpack)."""
    limit: int = SIZE_LIMIT
    """Size limit in bytes (decimal: 16,000,000 in the challenge)."""


def shipped_sources() -> dict[str, str]:
    return collect_sources(CODE_ROOT, [RUNTIME_ENTRY, *BOOTSTRAP_FILES])


def build_artifact(tensors: dict[str, torch.Tensor], metadata: dict[str, str], config: PackConfig) -> tuple[bytes, dict]:
    """The artifact bytes and their breakdown by section."""
    lineage = json.loads(metadata["lineage"])
    entries, raw = [], []
    for name in sorted(tensors):
        array = tensors[name].contiguous().numpy()
        entries.append({"name": name, "dtype": str(array.dtype), "shape": list(array.shape)})
        raw.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    files = shipped_sources()
    code_payload = compress(json.dumps(files, separators=(",", ":")).encode("utf-8"), config.code_codec)
    weights_payload = compress(b"".join(raw), config.codec, config.level)
    header = {
        "format": 1,
        "model_config": json.loads(metadata["model_config"]),
        "quant_index": json.loads(metadata["quant_index"]),
        "train_seq_len": int(metadata["train_seq_len"]),
        "lineage": {"tokenizer_sha256": lineage["tokenizer_sha256"], "vocab_size": lineage["vocab_size"]},
        "code": {"codec": config.code_codec, "entry": RUNTIME_ENTRY, "bootstrap": list(BOOTSTRAP_FILES),
                 "bundle_sha256": bundle_id(files)},
        "weights": {"codec": config.codec, "tensors": entries},
    }
    data = write_container(header, [("code", config.code_codec, code_payload), ("weights", config.codec, weights_payload)])
    breakdown = {
        "bytes_total": len(data),
        "bytes_code": len(code_payload),
        "bytes_code_uncompressed": sum(len(s.encode("utf-8")) for s in files.values()),
        "bytes_weights": len(weights_payload),
        "bytes_weights_uncompressed": sum(len(r) for r in raw),
        "bytes_header": len(data) - len(code_payload) - len(weights_payload),
        "code_files": len(files),
    }
    return data, breakdown


def size_verdict(total: int, limit: int) -> dict:
    return {"bytes_total": total, "limit": limit, "margin": limit - total, "verdict": "PASS" if total <= limit else "FAIL"}


def run_pack(config: PackConfig, quantize_dir: str | Path, out_dir: str | Path, force: bool = False,
             reporter: Reporter | None = None):
    reporter = reporter or Reporter()
    quant = StageDir(quantize_dir, "quantize")
    with StageWriter(out_dir, "pack", force) as writer:
        with writer.ledger.measure("compress", note="packing happens after training: outside both budgets"):
            tensors, metadata = load_tensors_and_metadata(quant.file("quantized"))
            data, breakdown = build_artifact(tensors, metadata, config)
        verdict = size_verdict(len(data), config.limit)
        reporter.log(stage="pack", **breakdown, limit=config.limit, margin=verdict["margin"], verdict=verdict["verdict"])
        if verdict["verdict"] == "FAIL":
            raise GolfError(
                f"artifact is {len(data):,} bytes, over the {config.limit:,}-byte limit by {-verdict['margin']:,} "
                f"(code {breakdown['bytes_code']:,}, weights {breakdown['bytes_weights']:,}, header {breakdown['bytes_header']:,}); nothing written",
                exit_code=SIZE_EXIT_CODE,
            )
        atomic_write_bytes(writer.path(ARTIFACT_FILE), data)
        writer.add_input("quantized", quant)
        writer.add_output("artifact", writer.path(ARTIFACT_FILE))
        manifest = writer.commit(to_dict(config), dict(quant.lineage), {**breakdown, **verdict}, reporter.text())
    return manifest


def check_artifact(path: str | Path, limit: int = SIZE_LIMIT) -> dict:
    """The size gate on an existing artifact file: real bytes against the limit."""
    path = Path(path)
    if not path.is_file():
        raise GolfError(f"{path}: no such artifact file")
    data = path.read_bytes()
    try:
        read_container(data)
    except ContainerError as exc:
        raise GolfError(f"{path}: {exc}") from None
    return size_verdict(len(data), limit)
